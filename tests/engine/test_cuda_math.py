"""The process-wide CUDA arithmetic set-up: TF32, and cuDNN's autotuning following its switch."""
from __future__ import annotations

import pytest
import torch

from emoji3d.config import load_config
from emoji3d.errors import ConfigError
from engine.cuda_math import configure_cuda_math


@pytest.fixture
def saved_flags():
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = saved


@pytest.mark.parametrize("autotune", [True, False])
def test_tf32_is_on_and_cudnn_autotuning_follows_its_switch(saved_flags, autotune):
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = not autotune
    configure_cuda_math(autotune)
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert torch.backends.cudnn.benchmark is autotune


def test_cudnn_autotune_is_an_engine_switch_off_by_default(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("")
    assert load_config(path, env={}).engine.cudnn_autotune is False
    path.write_text("[engine]\ncudnn_autotune = true\n")
    assert load_config(path, env={}).engine.cudnn_autotune is True
    path.write_text('[engine]\ncudnn_autotune = "yes"\n')
    with pytest.raises(ConfigError, match="engine.cudnn_autotune must be true or false"):
        load_config(path, env={})
