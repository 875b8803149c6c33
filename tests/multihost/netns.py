"""Three test "hosts" as Linux network namespaces on one switch.

Topology (all addresses link-local 169.254.42.0/24, reachable from nowhere else)::

    srv  169.254.42.1   bridge br0 in srv; PostgreSQL and the S3 server listen here
    h1   169.254.42.11  veth to br0
    h2   169.254.42.12  veth to br0
    ctl  169.254.42.100 veth from the root namespace (the test itself) to br0

``Hosts.cut(name)`` / ``Hosts.restore(name)`` set a host's link down / up inside
its namespace: its TCP connections stall (no reset) as on a real network split.
Needs root and ``ip netns``; :func:`unavailable` says why not, for a skip.
Everything made here is removed by :meth:`Hosts.remove` (deleting a namespace
deletes its veth ends).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field

SUBNET = "169.254.42"
ADDRESSES = {"srv": f"{SUBNET}.1", "h1": f"{SUBNET}.11", "h2": f"{SUBNET}.12", "ctl": f"{SUBNET}.100"}


def _ip(*args: str, netns: str | None = None) -> None:
    cmd = ["ip"] + (["-n", netns] if netns else []) + list(args)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")


def unavailable() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "needs root for ip netns"
    if shutil.which("ip") is None:
        return "iproute2 `ip` not installed"
    probe = f"e3dprobe{uuid.uuid4().hex[:6]}"
    done = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if done.returncode != 0:
        return f"ip netns add failed: {done.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


@dataclass
class Hosts:
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:5])
    made: list[str] = field(default_factory=list)

    def ns(self, host: str) -> str:
        return f"e3d{self.tag}{host}"

    def veth(self, host: str) -> str:  # interface names: at most 15 characters
        return f"e3{self.tag}{host}"

    def create(self) -> "Hosts":
        try:
            for host in ("srv", "h1", "h2"):
                _ip("netns", "add", self.ns(host))
                self.made.append(self.ns(host))
                _ip("link", "set", "lo", "up", netns=self.ns(host))
            srv = self.ns("srv")
            _ip("link", "add", "br0", "type", "bridge", netns=srv)
            _ip("addr", "add", f"{ADDRESSES['srv']}/24", "dev", "br0", netns=srv)
            _ip("link", "set", "br0", "up", netns=srv)
            for host in ("h1", "h2"):
                end, peer = self.veth(host), self.veth(host) + "p"
                _ip("link", "add", end, "netns", self.ns(host), "type", "veth", "peer", "name", peer, "netns", srv)
                _ip("addr", "add", f"{ADDRESSES[host]}/24", "dev", end, netns=self.ns(host))
                _ip("link", "set", end, "up", netns=self.ns(host))
                _ip("link", "set", peer, "master", "br0", netns=srv)
                _ip("link", "set", peer, "up", netns=srv)
            ctl, peer = self.veth("c"), self.veth("c") + "p"
            _ip("link", "add", ctl, "type", "veth", "peer", "name", peer, "netns", srv)
            _ip("addr", "add", f"{ADDRESSES['ctl']}/24", "dev", ctl)
            _ip("link", "set", ctl, "up")
            _ip("link", "set", peer, "master", "br0", netns=srv)
            _ip("link", "set", peer, "up", netns=srv)
        except BaseException:
            self.remove()
            raise
        return self

    def cut(self, host: str) -> None:
        _ip("link", "set", self.veth(host), "down", netns=self.ns(host))

    def restore(self, host: str) -> None:
        _ip("link", "set", self.veth(host), "up", netns=self.ns(host))

    def remove(self) -> None:
        subprocess.run(["ip", "link", "del", self.veth("c")], capture_output=True)
        for name in reversed(self.made):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self.made.clear()
