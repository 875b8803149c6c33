"""Weights management: manifest, resumable fetch with checksum refusal, the
restricted unpickler (malicious and valid NVIDIA-style pickles), conversion to
safetensors, and clear errors for corrupt files."""
from __future__ import annotations

import argparse
import builtins
import hashlib
import http.server
import json
import os
import pathlib
import pickle
import re
import subprocess
import sys
import threading
import types

import pytest
import torch

from emoji3d.errors import WeightsError
from engine.weights import core as W

REPO = pathlib.Path(__file__).resolve().parents[3]


# ---------------------------------------------------------------------------
# manifest


def test_packaged_manifest_lists_every_needed_file():
    m = W.load_manifest()
    names = {f.filename: f for f in m.files}
    for fn in ("ffhqrebalanced512-128.pkl", "stylegan2-ffhq-config-f.pt", "e4e_ffhq_encode.pt", "model_ir_se50.pth", "vgg16-397923af.pth", "alexnet-owt-7be5be79.pth"):
        assert fn in names, fn
        assert names[fn].licence
    assert "non-commercial" in names["ffhqrebalanced512-128.pkl"].licence
    assert "non-commercial" in names["stylegan2-ffhq-config-f.pt"].licence
    assert names["ffhqrebalanced512-128.pkl"].url.startswith("https://api.ngc.nvidia.com/")
    # torchvision publishes the sha256 prefix in the file name
    for fn in ("vgg16-397923af.pth", "alexnet-owt-7be5be79.pth"):
        e = names[fn]
        assert e.url == f"https://download.pytorch.org/models/{fn}"
        assert e.sha256 == re.search(r"-([0-9a-f]{8})\.pth$", fn).group(1) and e.sha256_is_prefix


def test_attribute_classifiers_are_optional_manifest_entries():
    m = W.load_manifest()
    attrs = {e.name: e for e in m.files if e.optional}
    assert sorted(attrs) == ["attribute_age", "attribute_gender", "attribute_glasses"]
    for e in attrs.values():
        assert e.kind == "tf_network_pickle" and "non-commercial" in e.licence
        assert e.url.startswith("https://nvlabs-fi-cdn.nvidia.com/stylegan/networks/metrics/celebahq-classifier-")
    assert attrs["attribute_glasses"].filename == "celebahq-classifier-19-eyeglasses.pkl"
    assert not any(e.optional for e in m.files if not e.name.startswith("attribute_"))


def test_cli_fetch_skips_optional_entries_unless_named_or_all(tmp_path, server, payload, capsys):
    from shell.commands.weights import main

    digest = hashlib.sha256(payload).hexdigest()
    manifest = tmp_path / "m.toml"
    manifest.write_text("".join(
        f'[files.{name}]\nfilename = "{name}.bin"\nurl = "{server.url}"\nsize = {len(payload)}\nsha256 = "{digest}"\n'
        f'licence = "MIT"\nkind = "arcface"\noptional = {opt}\n' for name, opt in (("core", "false"), ("extra", "true"))))
    wd = tmp_path / "w"
    base = ["--dir", str(wd), "--manifest", str(manifest), "fetch", "--accept-licence", "--no-progress"]
    assert main(base) == 0
    assert "optional entries not fetched (name them or pass --all): extra" in capsys.readouterr().err
    assert (wd / "core.bin").is_file() and not (wd / "extra.bin").exists()
    assert main(base + ["extra"]) == 0 and (wd / "extra.bin").read_bytes() == payload
    (wd / "extra.bin").unlink()
    assert main(base + ["--all"]) == 0 and (wd / "extra.bin").is_file()
    assert main(["--dir", str(wd), "--manifest", str(manifest), "list"]) == 0
    assert "(optional)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "patch, match",
    [
        ({"kind": "zip"}, "kind"),
        ({"sha256": "xyz"}, "sha256"),
        ({"colour": "red"}, "unknown key"),
        ({"filename": "../etc/passwd"}, "plain file name"),
        ({"url": "ftp://x"}, "http"),
        ({"size": -3}, "size"),
        ({"optional": "yes"}, "optional must be true or false"),
    ],
)
def test_manifest_rejects_bad_entries(patch, match):
    entry = {"filename": "a.pt", "url": "https://example.org/a.pt", "size": 10, "sha256": "", "licence": "MIT", "kind": "arcface"}
    entry.update(patch)
    with pytest.raises(WeightsError, match=match):
        W.Manifest.from_dict({"files": {"a": entry}})


# ---------------------------------------------------------------------------
# local HTTP server with Range support


class _Server:
    def __init__(self, payload: bytes, support_range: bool = True, content_type: str = "application/octet-stream"):
        self.payload, self.support_range, self.content_type = payload, support_range, content_type
        self.requests: list[dict] = []
        srv = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                srv.requests.append({"path": self.path, "range": rng})
                data, status = srv.payload, 200
                if rng and srv.support_range:
                    start = int(re.match(r"bytes=(\d+)-", rng).group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.end_headers()
                        return
                    data, status = data[start:], 206
                self.send_response(status)
                self.send_header("Content-Type", srv.content_type)
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


def _entry(url: str, payload: bytes, sha: str | None = "full") -> W.WeightFile:
    digest = hashlib.sha256(payload).hexdigest() if sha == "full" else sha
    return W.WeightFile("testnet", "testnet.bin", url, len(payload), digest, "Test-Licence-1.0", "arcface")


def test_fetch_resumes_partial_download_with_range(tmp_path, server, payload):
    e = _entry(server.url, payload)
    half = len(payload) // 3
    (tmp_path / "testnet.bin.part").write_bytes(payload[:half])
    asked = []
    path = W.fetch(e, tmp_path, progress=False, confirm_licence=lambda ent: asked.append(ent.licence) or True, chunk=4096)
    assert asked == ["Test-Licence-1.0"]
    assert path == tmp_path / "testnet.bin" and path.read_bytes() == payload
    assert server.requests[-1]["range"] == f"bytes={half}-"
    assert not (tmp_path / "testnet.bin.part").exists()
    # an installed, verified file is not downloaded again
    n = len(server.requests)
    assert W.fetch(e, tmp_path, progress=True, confirm_licence=None) == path
    assert len(server.requests) == n


def test_fetch_restarts_when_server_ignores_range(tmp_path, payload):
    s = _Server(payload, support_range=False)
    try:
        (tmp_path / "testnet.bin.part").write_bytes(b"garbage-prefix")
        path = W.fetch(_entry(s.url, payload), tmp_path, progress=False, confirm_licence=lambda e: True)
        assert path.read_bytes() == payload
    finally:
        s.close()


def test_fetch_refuses_file_failing_checksum(tmp_path, server, payload):
    bad = _entry(server.url, payload, sha=hashlib.sha256(b"other").hexdigest())
    with pytest.raises(W.ChecksumMismatch, match="testnet.bin") as ei:
        W.fetch(bad, tmp_path, progress=False, confirm_licence=lambda e: True)
    assert ei.value.key == "weights_checksum"
    assert not (tmp_path / "testnet.bin").exists() and not (tmp_path / "testnet.bin.part").exists()
    # wrong size is refused the same way
    wrong_size = W.WeightFile("testnet", "testnet.bin", server.url, len(payload) + 1, None, "L", "arcface")
    with pytest.raises(W.ChecksumMismatch, match="size"):
        W.fetch(wrong_size, tmp_path, progress=False, confirm_licence=lambda e: True)
    assert not list(tmp_path.iterdir())


def test_fetch_needs_licence_acceptance_before_any_download(tmp_path, server, payload):
    e = _entry(server.url, payload)
    for confirm in (None, lambda ent: False):
        with pytest.raises(W.LicenceNotAccepted) as ei:
            W.fetch(e, tmp_path, progress=False, confirm_licence=confirm)
        assert ei.value.key == "weights_licence_declined"
    assert server.requests == [] and not list(tmp_path.iterdir())


def test_fetch_reports_html_page_and_http_errors(tmp_path, payload):
    s = _Server(b"<html>confirm</html>", content_type="text/html; charset=utf-8")
    try:
        with pytest.raises(W.DownloadFailed, match="web page"):
            W.fetch(_entry(s.url, payload), tmp_path, progress=False, confirm_licence=lambda e: True)
        with pytest.raises(W.DownloadFailed, match="HTTP 404|cannot reach|HTTP"):
            W.fetch(_entry(s.url.replace("127.0.0.1", "127.0.0.1:1").rsplit(":", 1)[0] + ":1/x", payload), tmp_path, progress=False, confirm_licence=lambda e: True)
    finally:
        s.close()


def test_verify_file_states(tmp_path, payload):
    p = tmp_path / "testnet.bin"
    p.write_bytes(payload)
    assert W.verify_file(_entry("http://x/", payload), p).ok
    assert W.verify_file(_entry("http://x/", payload, sha=hashlib.sha256(payload).hexdigest()[:8]), p).detail == "size ok, sha256 prefix ok"
    assert not W.verify_file(_entry("http://x/", payload, sha="deadbeef"), p).ok
    assert W.verify_file(_entry("http://x/", payload), tmp_path / "nope").detail == "missing"


# ---------------------------------------------------------------------------
# restricted unpickler: malicious pickles


class _Reduce:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@pytest.fixture
def fake_nvidia_modules():
    """Throwaway modules named like the official ones, present only while pickling."""
    names = ["torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util"]
    saved = {n: sys.modules.get(n) for n in names}
    tu, pers, dn, du = (types.ModuleType(n) for n in names)

    def _reconstruct_persistent_obj(meta):  # never called by the restricted loader
        raise AssertionError("the real reconstructor must never run")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    pers._reconstruct_persistent_obj = _reconstruct_persistent_obj

    class EasyDict(dict):
        pass

    EasyDict.__module__ = "dnnlib.util"
    EasyDict.__qualname__ = "EasyDict"
    du.EasyDict = EasyDict
    tu.persistence, dn.util = pers, du
    sys.modules.update({"torch_utils": tu, "torch_utils.persistence": pers, "dnnlib": dn, "dnnlib.util": du})
    try:
        yield pers, du
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


def _persistent_pickle(pers, meta) -> bytes:
    return pickle.dumps({"G_ema": _Reduce(pers._reconstruct_persistent_obj, (meta,))}, protocol=4)


def _malicious_pickles(marker: pathlib.Path, pers) -> dict[str, bytes]:
    code = f"open({str(marker)!r}, 'w').write('pwned')"
    out = {
        "os.system": pickle.dumps(_Reduce(os.system, (f"touch {marker}",))),
        "builtins.exec": pickle.dumps(_Reduce(builtins.exec, (code,))),
        "builtins.eval": pickle.dumps(_Reduce(builtins.eval, (code,))),
        "nested in a dict": pickle.dumps({"G": [1, 2, _Reduce(builtins.exec, (code,))]}),
        "subprocess.Popen": pickle.dumps(_Reduce(subprocess.Popen, (["touch", str(marker)],))),
        # a lower-case (function) name from an NVIDIA module is not a data class: refused
        "torch_utils function": b"\x80\x04ctorch_utils.misc\nrun_anything\n(tR.",
    }
    for label, src in {
        "module_src top level": f"import os\n{code}\nclass Generator:\n    pass\n",
        "module_src class body": f"class Generator:\n    _x = {code}\n",
        "module_src assignment": f"_payload = {code}\nclass Generator:\n    pass\n",
        "module_src missing class": "x = 1\n",
    }.items():
        meta = dict(type="class", version=6, module_src=src, class_name="Generator", state={"_init_kwargs": {}})
        out[label] = _persistent_pickle(pers, meta)
    return out


def test_malicious_pickles_are_refused_and_nothing_runs(tmp_path, fake_nvidia_modules):
    pers, _ = fake_nvidia_modules
    marker = tmp_path / "MARKER"
    for label, blob in _malicious_pickles(marker, pers).items():
        path = tmp_path / f"{label.replace(' ', '_')}.pkl"
        path.write_bytes(blob)
        with pytest.raises(W.UnsafePickle) as ei:
            W.load_nvidia_pickle(path)
        assert str(path) in str(ei.value), label
        assert ei.value.key == "weights_unsafe_pickle"
        assert not marker.exists(), f"{label}: payload ran"


def test_torch_load_path_refuses_code_too(tmp_path):
    marker = tmp_path / "MARKER"
    p = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(2), "x": _Reduce(os.system, (f"touch {marker}",))}, p)
    with pytest.raises(W.UnsafePickle, match="evil.pt"):
        W.load_torch_checkpoint(p)
    with pytest.raises(W.UnsafePickle):
        W.convert(p, tmp_path / "out", "arcface")
    assert not marker.exists()


# ---------------------------------------------------------------------------
# restricted unpickler: a valid NVIDIA-style pickle

_NET_SRC = '''"""networks (test copy)"""
import torch
from torch_utils import persistence

@persistence.persistent_class
class MappingNetwork(torch.nn.Module):
    def __init__(self, z_dim, w_dim):
        super().__init__()

@persistence.persistent_class
class Generator(torch.nn.Module):
    def __init__(self, z_dim, w_dim, mapping_kwargs={}):
        super().__init__()
'''


def _make_persistent_class(pers, easydict, name):
    class Net(torch.nn.Module):
        def __init__(self, *args, **kwargs):
            super().__init__()
            self._init_args = list(args)
            self._init_kwargs = easydict(kwargs)

        def __reduce__(self):
            meta = dict(type="class", version=6, module_src=_NET_SRC, class_name=name, state=self.__getstate__())
            return pers._reconstruct_persistent_obj, (meta,)

    Net.__name__ = Net.__qualname__ = name
    return Net


def test_valid_nvidia_style_pickle_gives_state_dict_and_kwargs(tmp_path, fake_nvidia_modules):
    pers, du = fake_nvidia_modules
    Mapping = _make_persistent_class(pers, du.EasyDict, "MappingNetwork")
    Generator = _make_persistent_class(pers, du.EasyDict, "Generator")
    g = torch.Generator().manual_seed(0)
    G = Generator(8, 16, mapping_kwargs=du.EasyDict(num_layers=2, lr_multiplier=0.01))
    G.mapping = Mapping(8, 16)
    G.mapping.fc0 = torch.nn.Linear(8, 16)
    G.mapping.register_buffer("w_avg", torch.randn(16, generator=g))
    G.decoder = torch.nn.Sequential(torch.nn.Linear(16, 4), torch.nn.Softplus(), torch.nn.Linear(4, 2))
    G.register_buffer("scratch", torch.zeros(3), persistent=False)
    G.weight = torch.nn.Parameter(torch.randn(2, 3, generator=g))
    G.requires_grad_(False)
    expected = {k: v.clone() for k, v in G.state_dict().items()}
    data = {"G_ema": G, "training_set_kwargs": du.EasyDict(resolution=512, use_labels=True), "augment_pipe": None}
    blob = pickle.dumps(data, protocol=4)
    path = tmp_path / "net.pkl"
    path.write_bytes(blob)
    for n in ("torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util"):
        sys.modules.pop(n)  # the loader must not need (or import) them
    with pytest.raises(ModuleNotFoundError):
        pickle.loads(blob)

    pk = W.load_nvidia_pickle(path)
    net = pk.networks["G_ema"]
    assert net.class_name == "Generator"
    assert net.init_args == [8, 16]
    assert net.init_kwargs == {"mapping_kwargs": {"num_layers": 2, "lr_multiplier": 0.01}}
    assert list(net.state_dict) == list(expected)  # same order, non-persistent buffer excluded
    assert "scratch" not in net.state_dict
    for k, v in expected.items():
        assert torch.equal(net.state_dict[k], v), k
    assert pk.extras["training_set_kwargs"] == {"resolution": 512, "use_labels": True}

    out = W.convert(path, tmp_path / "eg3d", "eg3d_pickle")
    cfg, groups = W.load_converted(out)
    assert cfg["networks"]["G_ema"]["init_kwargs"]["mapping_kwargs"]["num_layers"] == 2
    assert cfg["kind"] == "eg3d_pickle" and cfg["files"] == {"G_ema": "G_ema.safetensors"}
    for k, v in expected.items():
        assert torch.equal(groups["G_ema"][k], v), k


# ---------------------------------------------------------------------------
# corrupt and truncated files


def test_truncated_pickle_names_file(tmp_path, fake_nvidia_modules):
    blob = pickle.dumps({"a": torch.ones(100)}, protocol=4)
    p = tmp_path / "ffhqrebalanced512-128.pkl"
    p.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(WeightsError, match="ffhqrebalanced512-128.pkl"):
        W.load_nvidia_pickle(p)
    p.write_bytes(b"\x00not a pickle at all")
    with pytest.raises(WeightsError, match="ffhqrebalanced512-128.pkl"):
        W.load_nvidia_pickle(p)


def test_corrupt_torch_checkpoint_names_file(tmp_path):
    p = tmp_path / "model_ir_se50.pth"
    torch.save({"w": torch.randn(64, 64)}, p)
    full = p.read_bytes()
    p.write_bytes(full[: len(full) // 2])
    with pytest.raises(WeightsError, match="model_ir_se50.pth.*(corrupt|truncated)"):
        W.load_torch_checkpoint(p)
    p.write_bytes(b"")
    with pytest.raises(WeightsError, match="model_ir_se50.pth.*empty"):
        W.load_torch_checkpoint(p)
    with pytest.raises(W.WeightsMissing, match="nothere.pth"):
        W.load_torch_checkpoint(tmp_path / "nothere.pth")


def test_corrupt_safetensors_names_file(tmp_path):
    p = tmp_path / "state.safetensors"
    W.save_safetensors({"a": torch.randn(32, 32)}, p)
    full = p.read_bytes()
    p.write_bytes(full[:-100])
    with pytest.raises(WeightsError, match="state.safetensors.*(corrupt|truncated)"):
        W.load_safetensors(p)
    p.write_bytes(b"garbage")
    with pytest.raises(WeightsError, match="state.safetensors"):
        W.load_safetensors(p)


# ---------------------------------------------------------------------------
# conversion of torch checkpoints


def test_convert_rosinality_e4e_arcface(tmp_path):
    g = torch.Generator().manual_seed(1)
    t = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    ros = {"g_ema": {"style.1.weight": t(4, 4)}, "d": {"convs.0.0.weight": t(2, 3, 3, 3)}, "latent_avg": t(512)}
    torch.save(ros, tmp_path / "sg2.pt")
    cfg, groups = W.load_converted(W.convert(tmp_path / "sg2.pt", tmp_path / "sg2", "stylegan2_rosinality"))
    assert set(groups) == {"g_ema", "d", "latent_avg"}
    assert torch.equal(groups["d"]["convs.0.0.weight"], ros["d"]["convs.0.0.weight"])
    assert torch.equal(groups["latent_avg"]["latent_avg"], ros["latent_avg"])

    e4e = {
        "state_dict": {"encoder.styles.0.linear.weight": t(3, 3), "decoder.style.1.weight": t(2, 2)},
        "latent_avg": t(18, 512),
        "opts": argparse.Namespace(stylegan_size=1024, encoder_type="Encoder4Editing", lpips_type="alex"),
    }
    torch.save(e4e, tmp_path / "e4e_ffhq_encode.pt")
    cfg, groups = W.load_converted(W.convert(tmp_path / "e4e_ffhq_encode.pt", tmp_path / "e4e", "e4e"))
    assert cfg["opts"]["stylegan_size"] == 1024
    assert list(groups["encoder"]) == ["styles.0.linear.weight"]
    assert list(groups["decoder"]) == ["style.1.weight"]
    assert torch.equal(groups["latent_avg"]["latent_avg"], e4e["latent_avg"])

    arc = {"input_layer.0.weight": t(64, 3, 3, 3), "input_layer.1.num_batches_tracked": torch.tensor(5)}
    torch.save(arc, tmp_path / "model_ir_se50.pth")
    _, groups = W.load_converted(W.convert(tmp_path / "model_ir_se50.pth", tmp_path / "arc", "arcface"))
    assert groups["state"]["input_layer.1.num_batches_tracked"].item() == 5

    with pytest.raises(WeightsError, match="g_ema"):
        W.convert(tmp_path / "model_ir_se50.pth", tmp_path / "x", "stylegan2_rosinality")


def test_require_names_fetch_command(tmp_path):
    e = W.load_manifest().get("e4e_ffhq")
    with pytest.raises(W.WeightsMissing, match="emoji3d weights fetch e4e_ffhq"):
        W.require(e, tmp_path)
    (tmp_path / e.filename).write_bytes(b"x")
    with pytest.raises(W.WeightsMissing, match="emoji3d weights convert e4e_ffhq"):
        W.require(e, tmp_path)


# ---------------------------------------------------------------------------
# CLI and the weights_only rule


def test_cli_fetch_verify_list_convert(tmp_path, server, payload, capsys):
    from shell.commands.weights import main

    arc = {"w": torch.arange(6.0)}
    blob_path = tmp_path / "blob.pth"
    torch.save(arc, blob_path)
    server.payload = blob_path.read_bytes()
    manifest = tmp_path / "m.toml"
    manifest.write_text(
        f'[files.arc]\nfilename = "model_ir_se50.pth"\nurl = "{server.url}"\nsize = {len(server.payload)}\n'
        f'sha256 = "{hashlib.sha256(server.payload).hexdigest()}"\nlicence = "MIT"\nkind = "arcface"\n'
    )
    wd = tmp_path / "w"
    base = ["--dir", str(wd), "--manifest", str(manifest)]
    assert main(base + ["fetch", "--no-progress"]) == 1  # stdin is not a terminal: licence not accepted
    assert "licence MIT" in capsys.readouterr().err
    assert main(base + ["fetch", "--accept-licence", "--no-progress", "--convert"]) == 0
    assert main(base + ["verify", "--print-digests"]) == 0
    assert hashlib.sha256(server.payload).hexdigest() in capsys.readouterr().out
    assert main(base + ["list"]) == 0
    assert "converted" in capsys.readouterr().out
    _, groups = W.load_converted(wd / "arc")
    assert torch.equal(groups["state"]["w"], arc["w"])
    (wd / "model_ir_se50.pth").write_bytes(b"tampered")
    assert main(base + ["verify"]) == 1
    assert main(["check-reference", str(tmp_path)]) == 1  # no config.json: not a fixture


def test_torch_load_always_weights_only():
    offenders = []
    for pkg in ("engine", "emoji3d", "storage", "bots", "bench"):
        for f in (REPO / pkg).rglob("*.py"):
            src = f.read_text(encoding="utf-8", errors="replace")
            for m in re.finditer(r"torch\.load\(", src):
                depth, i = 1, m.end()
                while i < len(src) and depth:
                    depth += {"(": 1, ")": -1}.get(src[i], 0)
                    i += 1
                call = src[m.start():i]
                if not re.search(r"weights_only\s*=\s*True", call):
                    offenders.append(f"{f.relative_to(REPO)}: {call[:80]}")
            if re.search(r"\bpickle\.loads?\(", src) and f.name != "weights.py":
                offenders.append(f"{f.relative_to(REPO)}: plain pickle.load")
    assert not offenders, offenders


def test_audit_accepts_official_style_source_with_bom():
    # stylegan2-ada's training/networks.py starts with a UTF-8 byte-order mark
    W.audit_module_src("\ufeff" + _NET_SRC, "Generator", "net.pkl")
    with pytest.raises(W.UnsafePickle, match="does not define class Mapping"):
        W.audit_module_src(_NET_SRC, "Mapping", "net.pkl")
    W.audit_module_src(_NET_SRC + "\nif __name__ == '__main__':\n    main()\n", "Generator", "net.pkl")


def test_source_audit_can_be_skipped_but_nothing_runs(tmp_path, fake_nvidia_modules):
    pers, _ = fake_nvidia_modules
    marker = tmp_path / "MARKER"
    src = f"open({str(marker)!r}, 'w').write('x')\nclass Generator:\n    pass\n"
    meta = dict(type="class", version=6, module_src=src, class_name="Generator", state={"_init_kwargs": {"a": 1}, "_modules": {}})
    p = tmp_path / "g.pkl"
    p.write_bytes(_persistent_pickle(pers, meta))
    with pytest.raises(W.UnsafePickle):
        W.load_nvidia_pickle(p)
    pk = W.load_nvidia_pickle(p, audit_source=False)
    assert pk.networks["G_ema"].init_kwargs == {"a": 1} and pk.networks["G_ema"].state_dict == {}
    assert not marker.exists()
