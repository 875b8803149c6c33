"""Compiling the generator passes before the first job (engine.avatar.warm_up, engine.resources).

The real slim engine on the CPU with PyTorch's ``eager`` compile backend (dynamo's tracing alone): after
the engine's start-up warm-up, the jobs that follow (a first order, an order whose style is cached, an
order whose portrait is cached too) compile nothing more. A compile that fails is reported at start."""
from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import warnings

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from emoji3d.config import Config, EngineConfig, PathsConfig
from emoji3d.pipeline_config import DualConfig, PipelineConfig
from engine.avatar.dual import style_round, update_2d_round
from engine.avatar.pipeline import MemoryCache
from engine.avatar.step_graph import WARMUP
from engine.avatar.warm_up import warm_up_steps
from tests.engine.avatar.own_process import in_a_process_of_its_own


def _slim_engine_config(folder, compile_backend: str) -> Config:
    return dataclasses.replace(Config(), root=folder, paths=PathsConfig(data_dir="data"),
                               engine=EngineConfig(device="cpu", preset="slim"),
                               pipeline=dataclasses.replace(PipelineConfig().reduced(2), compile=compile_backend))


def _compiled_graphs() -> int:
    return counters["stats"]["unique_graphs"]


def test_after_the_start_up_warm_up_the_jobs_compile_nothing(tmp_path, monkeypatch, caplog, unaligned_faces,
                                                              repo_root):
    from bench.inputs import sample_inputs
    from engine.resources import EngineResources

    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    torch._dynamo.reset()
    # what importing torch._dynamo leaves there in an engine process, before its resources load
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())
    counters.clear()
    cfg = _slim_engine_config(tmp_path, "eager")
    with caplog.at_level(logging.INFO, logger="emoji3d.engine"):
        res = EngineResources.load(cfg)
    assert _compiled_graphs() > 0
    assert "compile warm-up done in" in caplog.text and "(steps per stage: 1;" in caplog.text
    assert "failed" not in caplog.text
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(cfg.data_dir / "cache" / "torch-compile")

    compiled_at_start = _compiled_graphs()
    portrait, style = unaligned_faces
    other_portrait, _ = sample_inputs(repo_root)
    cache = MemoryCache()
    first = res.pipeline(portrait, style, seed=0, cache=cache)
    style_cached = res.pipeline(other_portrait, style, seed=0, cache=cache)
    portrait_cached = res.pipeline(portrait, style, seed=0, cache=cache)
    assert not first.logs["style_finetune"].skipped and style_cached.logs["style_finetune"].skipped
    assert portrait_cached.logs["invert_3d"].skipped
    assert _compiled_graphs() == compiled_at_start
    assert not counters["graph_break"], dict(counters["graph_break"])


def test_inductor_caches_in_the_data_folder_unless_the_operator_chose_another(tmp_path, monkeypatch):
    from engine.resources import use_compile_cache_dir

    cfg = _slim_engine_config(tmp_path, "inductor")
    ours = str(cfg.data_dir / "cache" / "torch-compile")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "set by the test")
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")  # restored afterwards
    assert use_compile_cache_dir(cfg) == ours == os.environ["TORCHINDUCTOR_CACHE_DIR"]
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "the operator's choice"))
    assert use_compile_cache_dir(cfg) == str(tmp_path / "the operator's choice")


def test_without_compile_the_engine_does_not_warm_up(tmp_path, caplog):
    from engine.resources import EngineResources

    with caplog.at_level(logging.INFO, logger="emoji3d.engine"):
        EngineResources.load(_slim_engine_config(tmp_path, "off"))
    assert "generator passes eager" in caplog.text and "warm-up" not in caplog.text


@pytest.mark.parametrize("update_2d_every, style_every", list(itertools.product([1, 2, 3], [1, 2, 3])))
def test_warm_up_steps_call_every_pass_and_capture_every_kind_of_round(update_2d_every, style_every):
    dual = DualConfig(update_2d_every=update_2d_every, style_every=style_every)

    def kinds(rounds: int) -> list[tuple[bool, bool]]:  # (with a 2D update, with the style loss)
        return [(update_2d_round(i, dual), style_round(i, dual)) for i in range(rounds)]

    # eager steps: a round with a 2D update and the style loss calls every pass any round calls
    assert (True, True) in kinds(warm_up_steps(dual, graphs=False))
    # captured steps: a kind of step is captured on its (WARMUP + 1)-th run
    in_the_warm_up = kinds(warm_up_steps(dual, graphs=True))
    in_a_job = set(kinds(300))
    assert {kind: in_the_warm_up.count(kind) >= WARMUP + 1 for kind in in_a_job} == dict.fromkeys(in_a_job, True)


def failed_compile_is_reported_at_start() -> None:
    import pathlib
    import tempfile

    from engine.avatar.networks import slim_networks
    from engine.avatar.pipeline import Pipeline
    from engine.resources import compile_before_jobs

    def backend_that_falls_over(graph_module, example_inputs):
        raise RuntimeError("the backend fell over")

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("emoji3d.engine").addHandler(handler)
    logging.getLogger("emoji3d.engine").setLevel(logging.INFO)
    cfg = _slim_engine_config(pathlib.Path(tempfile.mkdtemp()), "eager")
    cfg = dataclasses.replace(cfg, pipeline=dataclasses.replace(  # one kind of round: one step per stage
        cfg.pipeline, dual=dataclasses.replace(cfg.pipeline.dual, update_2d_every=1, style_every=1)))
    pipeline = Pipeline(slim_networks(seed=0), cfg.pipeline, compile_backend=backend_that_falls_over)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        compile_before_jobs(pipeline, cfg)
    failed = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert len(failed) == 2, failed
    for name, message in zip(("the EG3D generator", "the StyleGAN2 synthesis"), failed):
        assert message.startswith(f"torch.compile of {name} failed, it runs eagerly:"), message
        assert "the backend fell over" in message, message
    assert any("compile warm-up done in" in r.getMessage() for r in records)


@pytest.mark.slow  # 15 s, mostly tracing; the failure itself is tested in test_compiled.py
def test_a_compile_that_fails_is_reported_at_start():
    in_a_process_of_its_own(__name__, "failed_compile_is_reported_at_start")
