"""The lazy build machinery (_build): digest keys, arch coverage, no compile on
CPU paths, prebuild without a GPU, which prebuilt binaries are reused."""
from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch

from engine.ops import _build, dispatch, prebuild
from engine.ops.bias_act import bias_act


def test_cpu_tensors_never_build():
    def refuse(extension):
        raise AssertionError(f"no kernel may be loaded for CPU tensors ({extension})")

    with dispatch.kernel_loader("cuda", refuse):
        x = torch.zeros(2, 3)
        bias_act(x, act="lrelu")  # default impl='auto' on CPU
        bias_act(x, act="lrelu", impl="ref")


def test_digest_depends_on_arch_and_extension():
    a = _build.digest("upfirdn2d", "8.0")
    assert a == _build.digest("upfirdn2d", "8.0")
    assert a != _build.digest("upfirdn2d", "9.0")
    assert a != _build.digest("bias_act", "8.0")
    assert _build.digest("modconv", "8.0") != _build.digest("modconv", "8.0;9.0")
    assert len({_build.source_digest(name) for name in _build.EXTENSIONS}) == len(_build.EXTENSIONS)
    for name, files in _build.EXTENSIONS.items():
        for f in files:
            assert (_build.SOURCE_DIR / f).is_file(), f"{name}: missing source {f}"


@pytest.mark.parametrize("name", sorted(_build.EXTENSIONS))
def test_source_digest_follows_every_source_byte(tmp_path, name):
    sources = tmp_path / "cuda"
    shutil.copytree(_build.SOURCE_DIR, sources)
    original = _build.source_digest(name, sources)
    assert original == _build.source_digest(name)  # an identical copy hashes the same
    for file in _build.EXTENSIONS[name]:
        path = sources / file
        text = path.read_bytes()
        path.write_bytes(text + b"\n")  # one byte more, e.g. a kernel edit
        assert _build.source_digest(name, sources) != original, f"{file}: change not in the digest"
        path.write_bytes(text)
    assert _build.source_digest(name, sources) == original
    other = next(n for n in _build.EXTENSIONS if n != name)
    (sources / _build.EXTENSIONS[other][0]).write_bytes(b"// another extension's change\n")
    assert _build.source_digest(name, sources) == original  # only its own sources count


def test_unknown_extension_is_a_clear_error():
    with pytest.raises(KeyError, match="unknown op extension"):
        _build.source_digest("upfirdn3d")


def test_prebuild_without_gpu_or_arch_exits_zero(monkeypatch, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    assert prebuild.main([]) == 0
    assert "nothing to build" in capsys.readouterr().out


def test_arch_coverage_rules():
    assert _build.arch_covers("8.0;8.6;8.9;9.0", "9.0")
    assert not _build.arch_covers("8.0;8.6", "9.0")
    assert _build.arch_covers("8.0 8.6+PTX", "9.0")  # PTX JIT-compiles forward
    assert not _build.arch_covers("9.0+PTX", "8.6")


def _prebuilt(cache, folder: str, so_bytes: bytes, *, arch: str = "9.0", source_digest: str | None = None) -> None:
    """A cache folder as a prebuild leaves it: the manifest and the module's .so."""
    d = cache / folder
    d.mkdir(parents=True)
    (d / "mod.so").write_bytes(so_bytes)
    (d / "emoji3d-build.json").write_text(json.dumps(
        {"name": "bias_act", "module": "emoji3d_bias_act_test", "so_file": "mod.so", "arch": arch,
         "source_digest": source_digest or _build.source_digest("bias_act")}))


def test_a_prebuilt_binary_that_does_not_load_is_passed_over_for_a_build(tmp_path, monkeypatch):
    """A prebuilt extension made elsewhere (e.g. carried to a GPU machine, or in an image) that cannot be
    imported here is skipped with a warning, so that ``build`` compiles one instead of the op falling
    back to its reference for good; folders for other sources or other GPUs are never opened."""
    monkeypatch.setenv("EMOJI3D_OPS_CACHE", str(tmp_path))
    _prebuilt(tmp_path, "bias_act-other-gpu", b"not opened", arch="8.0")
    _prebuilt(tmp_path, "bias_act-other-source", b"not opened", source_digest="0" * 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # opening either would warn: their .so files are not shared objects
        assert _build._load_prebuilt("bias_act", cap="9.0") is None
    _prebuilt(tmp_path, "bias_act-damaged", b"\x7fELF but not a shared object")
    with pytest.warns(RuntimeWarning, match="prebuilt bias_act in .*bias_act-damaged does not load here"):
        assert _build._load_prebuilt("bias_act", cap="9.0") is None
