"""What the trainable methods share while fitting: batches of images, the frozen features a head
trains on (cached on the device when they fit), and training steps replayed as CUDA graphs."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from uad.runtime import memory_budget


def batches(images: np.ndarray, batch_size: int, desc: str | None = None) -> Iterator[np.ndarray]:
    """Consecutive uint8 slices of an image array, with a progress bar when `desc` is given."""
    starts = range(0, len(images), batch_size)
    if desc:
        starts = tqdm(starts, desc=desc, unit="batch", leave=False, mininterval=1.0)
    for s in starts:
        yield images[s: s + batch_size]


class TrainingFeatures:
    """The frozen input of a trainable head for every training image, served by batch index.

    The backbone is frozen and there is no augmentation, so the features are computed
    once and kept on the device when they fit in half of its free memory (the same
    values as the papers' per-step recomputation). Otherwise only the uint8 images stay
    there and each batch is recomputed: DFR's 3456 channels for 391 images at 256 px
    are 22 GB in fp32, more than half a 24 GB card. The cache holds what `compute` returns,
    in the layout the head trains on (DFR: one row per region), so a batch is one gather.
    """

    def __init__(self, images: np.ndarray, compute: Callable[[np.ndarray | torch.Tensor], torch.Tensor],
                 dtype: torch.dtype, batch_size: int, device: torch.device):
        self.compute, self.dtype, self.batch_size, self.device = compute, dtype, batch_size, device
        self.length = len(images)
        sample = compute(images[:1])
        need = sample.numel() * torch.empty((), dtype=dtype).element_size() * len(images)
        self.cached = need <= memory_budget(device)
        if self.cached:  # filled in place: concatenating batches would need twice the memory at the end
            self.data = torch.empty((len(images), *sample.shape[1:]), dtype=dtype, device=device)
            start = 0
            for batch in batches(images, batch_size, desc="features"):
                self.data[start: start + len(batch)] = compute(batch)
                start += len(batch)
        else:
            self.images = torch.from_numpy(np.array(images)).to(device)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: torch.Tensor) -> torch.Tensor:
        if self.cached:
            return self.data[index]
        return self.compute(self.images[index]).to(self.dtype)

    def chunks(self, limit: int | None = None) -> Iterator[torch.Tensor]:
        """Consecutive batches of the first `limit` images (all by default)."""
        end = self.length if limit is None else min(limit, self.length)
        for s in range(0, end, self.batch_size):
            yield self[torch.arange(s, min(s + self.batch_size, end), device=self.device)]


class TrainingSteps:
    """Runs one optimisation step (`step(index)`: forward, backward, optimiser step) per batch.

    On CUDA each batch size is captured once as a CUDA graph, after `WARMUP` eager steps,
    and replayed from then on: the same kernels in the same order, without the launch
    overhead of hundreds of small kernels that bounds training at the papers' batch of 4.
    The optimiser must be built with `capturable=TrainingSteps.graphed_on(device)`. Elsewhere
    the step runs eagerly.
    `step` returns detached tensors, overwritten by the next replay: consume them at once.
    """

    WARMUP = 3

    def __init__(self, step: Callable[[torch.Tensor], tuple[torch.Tensor, ...]], optimizer: torch.optim.Optimizer,
                 device: torch.device):
        self.step, self.optimizer = step, optimizer
        self.graphed = self.graphed_on(device)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, tuple[torch.Tensor, ...]]] = {}
        self.eager_runs: Counter[int] = Counter()

    @staticmethod
    def graphed_on(device: torch.device) -> bool:
        """Whether steps on `device` are replayed as CUDA graphs (their optimiser must be capturable)."""
        return device.type == "cuda"

    def __call__(self, index: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n = len(index)
        if n in self.graphs:
            graph, static_index, out = self.graphs[n]
            static_index.copy_(index)
            graph.replay()
            return out
        if not self.graphed:
            self.optimizer.zero_grad(set_to_none=True)
            return self.step(index)
        if self.eager_runs[n] < self.WARMUP:  # warm-up on a side stream, as capture requires
            self.eager_runs[n] += 1
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.optimizer.zero_grad(set_to_none=True)
                out = self.step(index)
            torch.cuda.current_stream().wait_stream(side)
            return out
        static_index = index.clone()
        self.optimizer.zero_grad(set_to_none=True)  # the captured backward then writes fresh gradients
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self.step(static_index)
        self.graphs[n] = (graph, static_index, out)
        graph.replay()  # capture records without running: this is the step itself
        return out
