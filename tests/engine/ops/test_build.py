"""The lazy build machinery: impl switch, digest keys, no compile on CPU paths, prebuild."""
from __future__ import annotations

import pytest
import torch

from engine.ops import _build, prebuild
from engine.ops.bias_act import bias_act


def test_impl_switch_on_cpu_never_builds(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("build must not be attempted for CPU tensors")

    monkeypatch.setattr(_build, "build", boom)
    x = torch.zeros(2, 3)
    assert _build.use_cuda("ref", x, "bias_act") is False
    assert _build.use_cuda("auto", x, "bias_act") is False
    bias_act(x, act="lrelu")  # default impl='auto' on CPU


def test_cuda_on_cpu_tensor_is_a_clear_error():
    with pytest.raises(_build.OpsBuildError, match="CUDA tensor"):
        _build.use_cuda("cuda", torch.zeros(1), "upfirdn2d")
    with pytest.raises(ValueError, match="impl must be"):
        _build.use_cuda("fused", torch.zeros(1), "upfirdn2d")


def test_digest_depends_on_arch_and_sources():
    a = _build.digest("upfirdn2d", "8.0")
    assert a == _build.digest("upfirdn2d", "8.0")
    assert a != _build.digest("upfirdn2d", "9.0")
    assert a != _build.digest("bias_act", "8.0")
    for name, files in _build.EXTENSIONS.items():
        for f in files:
            assert (_build.SOURCE_DIR / f).is_file(), f"{name}: missing source {f}"


def test_auto_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setattr(_build, "_failed", {})
    monkeypatch.setattr(_build, "_loaded", {})

    def fail(name, verbose=False):
        raise RuntimeError("nvcc exploded")

    monkeypatch.setattr(_build, "build", fail)
    with pytest.warns(RuntimeWarning, match="falling back"):
        assert _build.get("bias_act") is None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _build.get("bias_act") is None  # second call: silent


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
    assert _build.source_digest("modconv") == _build.source_digest("modconv")
    assert _build.digest("modconv", "8.0") != _build.digest("modconv", "8.0;9.0")
