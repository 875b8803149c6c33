"""Downloads against a local HTTP server (Range support on or off): licence first, resume,
refusal of files failing their checksum, web pages and HTTP errors; and the CLI's
fetch / verify / list."""
from __future__ import annotations

import hashlib
import http.server
import re
import threading

import pytest
import torch

from engine.weights import fetch as weights_fetch
from engine.weights.errors import ChecksumMismatch, DownloadFailed, LicenceNotAccepted
from engine.weights.manifest import WeightFile
from tests.engine.nets.progan_reference import REFERENCE, recipe_variables, tf_pickle


class _Server:
    def __init__(self, payload: bytes, support_range: bool = True, content_type: str = "application/octet-stream"):
        self.payload, self.support_range, self.content_type = payload, support_range, content_type
        self.requests: list[dict] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                wanted = self.headers.get("Range")
                server.requests.append({"path": self.path, "range": wanted})
                data, status = server.payload, 200
                if wanted and server.support_range:
                    start = int(re.match(r"bytes=(\d+)-", wanted).group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.end_headers()
                        return
                    data, status = data[start:], 206
                self.send_response(status)
                self.send_header("Content-Type", server.content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/file.bin"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def payload() -> bytes:
    g = torch.Generator().manual_seed(7)
    return bytes(torch.randint(0, 256, (300_000,), generator=g, dtype=torch.uint8).tolist())


@pytest.fixture
def server(payload):
    s = _Server(payload)
    yield s
    s.close()


def _entry(url: str, payload: bytes, sha: str | None = "full") -> WeightFile:
    digest = hashlib.sha256(payload).hexdigest() if sha == "full" else sha
    return WeightFile("testnet", "testnet.bin", url, len(payload), digest, "Test-Licence-1.0", "arcface")


def test_fetch_resumes_partial_download_with_range(tmp_path, server, payload):
    entry = _entry(server.url, payload)
    third = len(payload) // 3
    (tmp_path / "testnet.bin.part").write_bytes(payload[:third])
    asked = []
    path = weights_fetch.fetch(entry, tmp_path, progress=False,
                               confirm_licence=lambda e: asked.append(e.licence) or True, chunk=4096)
    assert asked == ["Test-Licence-1.0"]
    assert path == tmp_path / "testnet.bin" and path.read_bytes() == payload
    assert server.requests[-1]["range"] == f"bytes={third}-"
    assert not (tmp_path / "testnet.bin.part").exists()
    # an installed, verified file is not downloaded again (and no licence question)
    n = len(server.requests)
    assert weights_fetch.fetch(entry, tmp_path, progress=True, confirm_licence=None) == path
    assert len(server.requests) == n


def test_fetch_restarts_when_server_ignores_range(tmp_path, payload):
    s = _Server(payload, support_range=False)
    try:
        (tmp_path / "testnet.bin.part").write_bytes(b"garbage-prefix")
        path = weights_fetch.fetch(_entry(s.url, payload), tmp_path, progress=False, confirm_licence=lambda e: True)
        assert path.read_bytes() == payload
    finally:
        s.close()


def test_fetch_refuses_file_failing_checksum(tmp_path, server, payload):
    bad = _entry(server.url, payload, sha=hashlib.sha256(b"other").hexdigest())
    with pytest.raises(ChecksumMismatch, match="testnet.bin") as ei:
        weights_fetch.fetch(bad, tmp_path, progress=False, confirm_licence=lambda e: True)
    assert ei.value.key == "weights_checksum"
    assert not (tmp_path / "testnet.bin").exists() and not (tmp_path / "testnet.bin.part").exists()
    # wrong size is refused the same way
    wrong_size = WeightFile("testnet", "testnet.bin", server.url, len(payload) + 1, None, "L", "arcface")
    with pytest.raises(ChecksumMismatch, match="size"):
        weights_fetch.fetch(wrong_size, tmp_path, progress=False, confirm_licence=lambda e: True)
    assert not list(tmp_path.iterdir())


def test_fetch_needs_licence_acceptance_before_any_download(tmp_path, server, payload):
    entry = _entry(server.url, payload)
    for confirm in (None, lambda e: False):
        with pytest.raises(LicenceNotAccepted) as ei:
            weights_fetch.fetch(entry, tmp_path, progress=False, confirm_licence=confirm)
        assert ei.value.key == "weights_licence_declined"
    assert server.requests == [] and not list(tmp_path.iterdir())
    assert "licence Test-Licence-1.0" in weights_fetch.licence_text(entry)


def test_fetch_reports_html_page_and_http_errors(tmp_path, payload):
    s = _Server(b"<html>confirm</html>", content_type="text/html; charset=utf-8")
    try:
        with pytest.raises(DownloadFailed, match="web page"):
            weights_fetch.fetch(_entry(s.url, payload), tmp_path, progress=False, confirm_licence=lambda e: True)
        unreachable = _entry("http://127.0.0.1:1/x", payload)
        with pytest.raises(DownloadFailed, match="cannot reach|HTTP"):
            weights_fetch.fetch(unreachable, tmp_path, progress=False, confirm_licence=lambda e: True)
    finally:
        s.close()


# ----------------------------------------------------------------------------- the CLI


def test_cli_fetch_skips_optional_entries_unless_named_or_all(tmp_path, server, payload, capsys):
    from shell.commands.weights import main

    digest = hashlib.sha256(payload).hexdigest()
    manifest_file = tmp_path / "m.toml"
    manifest_file.write_text("".join(
        f'[files.{name}]\nfilename = "{name}.bin"\nurl = "{server.url}"\nsize = {len(payload)}\nsha256 = "{digest}"\n'
        f'licence = "MIT"\nkind = "arcface"\noptional = {opt}\n' for name, opt in (("core", "false"), ("extra", "true"))))
    weights_dir = tmp_path / "w"
    base = ["--dir", str(weights_dir), "--manifest", str(manifest_file), "fetch", "--accept-licence", "--no-progress"]
    assert main(base) == 0
    assert "optional entries not fetched (name them or pass --all): extra" in capsys.readouterr().err
    assert (weights_dir / "core.bin").is_file() and not (weights_dir / "extra.bin").exists()
    assert main(base + ["extra"]) == 0 and (weights_dir / "extra.bin").read_bytes() == payload
    (weights_dir / "extra.bin").unlink()
    assert main(base + ["--all"]) == 0 and (weights_dir / "extra.bin").is_file()
    assert main(["--dir", str(weights_dir), "--manifest", str(manifest_file), "list"]) == 0
    assert "(optional)" in capsys.readouterr().out


def test_cli_fetch_convert_verify_list(tmp_path, server, capsys):
    """A small attribute classifier served as its official pickle: fetched, converted on the way,
    verified, listed as converted, read by from_pretrained; tampering is caught."""
    from engine.nets.progan_classifier import ProGANClassifier
    from shell.commands.weights import main

    case = REFERENCE["fused_mbstd4_32px"]
    server.payload = tf_pickle(list(recipe_variables(case).items()), case["static_kwargs"])
    manifest_file = tmp_path / "m.toml"
    manifest_file.write_text(
        f'[files.clf]\nfilename = "celebahq-classifier-19-eyeglasses.pkl"\nurl = "{server.url}"\n'
        f'size = {len(server.payload)}\nsha256 = "{hashlib.sha256(server.payload).hexdigest()}"\nlicence = "MIT"\n'
        'kind = "tf_network_pickle"\n')
    weights_dir = tmp_path / "w"
    base = ["--dir", str(weights_dir), "--manifest", str(manifest_file)]
    assert main(base + ["fetch", "--no-progress"]) == 1  # stdin is not a terminal: licence not accepted
    assert "licence MIT" in capsys.readouterr().err
    assert main(base + ["fetch", "--accept-licence", "--no-progress", "--convert"]) == 0
    assert main(base + ["verify", "--print-digests"]) == 0
    assert hashlib.sha256(server.payload).hexdigest() in capsys.readouterr().out
    assert main(base + ["list"]) == 0
    assert "converted" in capsys.readouterr().out
    assert ProGANClassifier.from_pretrained(weights_dir / "clf").config.resolution == 32
    (weights_dir / "celebahq-classifier-19-eyeglasses.pkl").write_bytes(b"tampered")
    assert main(base + ["verify"]) == 1
    assert main(["check-reference", str(tmp_path)]) == 1  # no config.json: not a fixture
