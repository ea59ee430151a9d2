"""--compile's persistent inductor cache: configured under $CTXSEG_HOME before torch.compile (no
compile runs here; docs/benchmarks.md has the first vs second run figures)."""

from __future__ import annotations

import os

import pytest
import torch
import torch._functorch.config as functorch_config
import torch._inductor.config as inductor_config

from ctxseg.engine import compile_cache

CONFIG = [(inductor_config, "fx_graph_cache"), (inductor_config, "autotune_local_cache")]
CONFIG += [(functorch_config, "enable_autograd_cache")]


@pytest.fixture(autouse=True)
def _restore_torch_config():
    saved = [getattr(mod, name) for mod, name in CONFIG]
    yield
    for (mod, name), value in zip(CONFIG, saved):
        setattr(mod, name, value)


def _isolate(monkeypatch, tmp_path):
    monkeypatch.setenv("CTXSEG_HOME", str(tmp_path / "home"))
    for var in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "CTXSEG_COMPILE_CACHE"):
        monkeypatch.delenv(var, raising=False)  # restored afterwards, also after configure() set them
    for mod, name in CONFIG:
        setattr(mod, name, False)


def test_cache_dir_under_ctxseg_home_and_caches_on(monkeypatch, tmp_path):
    _isolate(monkeypatch, tmp_path)
    got = compile_cache.configure()
    want = tmp_path / "home" / "compile" / "inductor"
    assert got == want and want.is_dir()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(want)
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    assert cache_dir() == str(want)  # where inductor itself will write
    assert inductor_config.fx_graph_cache and inductor_config.autotune_local_cache
    assert functorch_config.enable_autograd_cache


def test_users_inductor_dir_wins_and_opt_out(monkeypatch, tmp_path):
    _isolate(monkeypatch, tmp_path)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert compile_cache.configure() == tmp_path / "mine"
    monkeypatch.setenv("CTXSEG_COMPILE_CACHE", "0")
    inductor_config.fx_graph_cache = False
    assert compile_cache.configure() is None and not inductor_config.fx_graph_cache


def test_inference_compile_configures_the_cache_first(monkeypatch, tmp_path):
    from ctxseg.engine import inference

    _isolate(monkeypatch, tmp_path)
    seen = []
    monkeypatch.setattr(torch, "compile", lambda m: seen.append(inductor_config.fx_graph_cache) or m)
    inference.set_compile(True)
    try:
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).eval()
        inference.inference_model(model)
    finally:
        inference.set_compile(False)
    assert seen == [True]
