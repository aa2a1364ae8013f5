"""DFR's training step alone, at the paper's widths, against its bf16 FLOP floor.

Times the autoencoder's optimisation step on random regional vectors (batch 4 of a 64 x 64 grid of
3,456-channel vectors, 3,456 -> 1,736 -> 8 -> 8 -> 8 -> 1,736 -> 3,456 as PCA picks on random
backbone weights), replayed as CUDA graphs exactly as `DFR.fit` replays it, in two formulations:

- `rows`: the library's (`uad.methods.dfr.model.reconstruction_step` on row-major vectors, fused
  Adam where graphed);
- `conv`: the formulation it replaced, kept here for comparison: the vectors cached channels-first,
  widened to fp32 before the compiled forward, the modules applied as 1x1 convolutions under cuDNN
  autotuning, Adam's multi-tensor update.

With `--profile` the last formulation's kernels are listed per step. On a CPU the steps run eagerly
(smoke runs, and the test that both formulations train alike).

    python3 -m benchmarks.dfr_step --out benchmarks/results/dfr_step_h100.json
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks import harness
from benchmarks.speed import cae_step_flops, matmul_bf16_tflops
from uad.methods.dfr.model import FeatCAE, adam, reconstruction_step
from uad.methods.fitting import TrainingSteps
from uad.runtime import autocast, backend_flag, configure_precision, resolve_device, storage_dtype

FORMULATIONS = ("conv", "rows")


def build(formulation: str, data: torch.Tensor, latent: int, precision: str, device: torch.device,
          seed: int = 0) -> TrainingSteps:
    """The step of one formulation over `data` (N, G*G, C) in the storage dtype, from the same initial
    weights (`seed`) whichever the formulation."""
    torch.manual_seed(seed)
    cae = FeatCAE(data.shape[-1], latent).to(device).train()
    compiled = device.type == "cuda"
    if formulation == "rows":
        optim = adam(cae, 1e-4, 0.0, device)
        train = reconstruction_step(cae, optim, precision, device, compiled=compiled)

        def step(index: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return train(data[index].flatten(0, 1))
    elif formulation == "conv":
        n, positions, channels = data.shape
        side = int(positions ** 0.5)
        maps = data.view(n, side, side, channels).permute(0, 3, 1, 2).contiguous()  # channels-first cache
        optim = torch.optim.Adam(cae.parameters(), lr=1e-4, capturable=TrainingSteps.graphed_on(device))

        def loss_of(x: torch.Tensor) -> torch.Tensor:
            with autocast(precision, device):
                recon = cae.decoder(cae.encoder(x))
            return F.mse_loss(recon.float(), x)

        if compiled:
            loss_of = torch.compile(loss_of, dynamic=False)

        def step(index: torch.Tensor) -> tuple[torch.Tensor, ...]:
            x = maps[index].float()
            with backend_flag(torch.backends.cudnn, "benchmark", True):
                loss = loss_of(x)
                loss.backward()
            optim.step()
            return (loss.detach(),)
    else:
        raise ValueError(f"formulation: {formulation!r} is not one of {FORMULATIONS}")
    return TrainingSteps(step, optim, device)


def batches(n: int, batch: int, steps: int, device: torch.device, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randperm(n, generator=g)[:batch].to(device) for _ in range(steps)]


def timed_steps(run: Callable[[torch.Tensor], tuple[torch.Tensor, ...]], index: list[torch.Tensor],
                device: torch.device, warmup: int = 10) -> tuple[float, list[float]]:
    """Mean seconds per step after `warmup` steps (capture included in those), and every step's loss."""
    losses = [float(run(i)[0]) for i in index[:warmup]]
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = [run(i)[0].clone() for i in index[warmup:]]
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / max(len(index) - warmup, 1)
    return seconds, losses + [float(x) for x in out]


def kernel_profile(run: Callable[[torch.Tensor], Any], index: torch.Tensor, steps: int = 20,
                   top: int = 25) -> list[dict[str, Any]]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            run(index)
        torch.cuda.synchronize()
    rows = sorted(((e.key, e.count, e.device_time_total) for e in prof.key_averages()), key=lambda r: -r[2])
    return [{"kernel": k[:120], "calls_per_step": c / steps, "ms_per_step": round(t / steps / 1e3, 4)}
            for k, c, t in rows[:top]]


def measure(formulations: Sequence[str], *, images: int, batch: int, grid: int, channels: int, latent: int,
            steps: int, precision: str, device: torch.device, profile: bool) -> dict[str, Any]:
    configure_precision(precision, device)
    g = torch.Generator(device="cpu").manual_seed(0)
    data = torch.randn(images, grid * grid, channels, generator=g).to(device, storage_dtype(precision))
    index = batches(images, batch, steps, device)
    result: dict[str, Any] = {"batch": batch, "grid": grid, "channels": channels, "latent": latent,
                              "precision": precision, "steps": steps, "formulations": {}}
    if device.type == "cuda":
        result["bf16_matmul_tflops"] = round(matmul_bf16_tflops(device), 1)
    # the same autoencoder in every formulation; counted on its own copy, before any step is captured
    flops = cae_step_flops(FeatCAE(channels, latent).to(device), batch * grid * grid, precision, device)
    for name in formulations:
        start = time.perf_counter()
        run = build(name, data, latent, precision, device)
        seconds, losses = timed_steps(run, index, device)
        entry = {"step_ms": round(seconds * 1e3, 4), "setup_and_run_s": round(time.perf_counter() - start, 1),
                 "flops_per_step": flops, "losses": losses}
        if "bf16_matmul_tflops" in result:
            floor = entry["flops_per_step"] / (result["bf16_matmul_tflops"] * 1e12)
            entry.update(floor_ms=round(floor * 1e3, 4), step_over_floor=round(seconds / floor, 2))
        result["formulations"][name] = entry
        print(name, {k: v for k, v in entry.items() if k != "losses"}, flush=True)
    if profile and device.type == "cuda":
        result["profile"] = {"formulation": formulations[-1], "kernels": kernel_profile(run, index[0])}
    return result


def main(argv: Sequence[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.dfr_step", description=__doc__.splitlines()[0])
    ap.add_argument("--formulations", nargs="+", default=list(FORMULATIONS), choices=FORMULATIONS)
    ap.add_argument("--images", type=int, default=64, help="regional feature maps to draw batches from")
    ap.add_argument("--batch", type=int, default=4, help="the paper's training batch")
    ap.add_argument("--grid", type=int, default=64, help="regions per side (64 at 256 px)")
    ap.add_argument("--channels", type=int, default=3456, help="VGG19's 12 layers")
    ap.add_argument("--latent", type=int, default=4)
    ap.add_argument("--steps", type=int, default=210, help="steps timed after 10 warm-up steps")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--commit", default=None)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/dfr_step.json"))
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    report = {**harness.header("dfr_step", __doc__.splitlines()[0], device, commit=args.commit),
              **measure(args.formulations, images=args.images, batch=args.batch, grid=args.grid,
                        channels=args.channels, latent=args.latent, steps=args.steps, precision=args.precision,
                        device=device, profile=args.profile)}
    harness.write_report(args.out, report)
    print(f"wrote {args.out}", flush=True)
    return args.out


if __name__ == "__main__":
    main()
