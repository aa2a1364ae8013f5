"""Nearest memory items of many query vectors: one matmul of augmented operands, then min passes.

The distance matrix (queries x items) is the largest tensor of CFA's and PatchCore's steps;
it is written once and read by a few `min` passes, and the backward pass is sparse (only
the chosen items). On a GPU an fp32 search can run as 3xTF32 on tensor cores at close to
fp32's accuracy (`matmul_3xtf32`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from uad.runtime import backend_flag, round_up


def _wide(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


TF32_DROPPED_BITS = 13  # fp32 keeps 23 mantissa bits, TF32 10


def tf32_split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 `x` as hi + lo, exactly: hi rounded to TF32's 10 mantissa bits, so tensor cores read it
    unchanged, and lo the remainder (|lo| <= 2^-11 |x|)."""
    if x.dtype != torch.float32:
        raise TypeError(f"tf32_split takes fp32 tensors, got {x.dtype}")
    bits = x.contiguous().view(torch.int32)
    hi = ((bits + (1 << (TF32_DROPPED_BITS - 1))) & -(1 << TF32_DROPPED_BITS)).view(torch.float32)
    return hi, x - hi


def matmul_3xtf32(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """left @ right.T for fp32 operands at close to fp32's accuracy, on TF32 tensor cores.

    hi.hi + hi.lo + lo.hi as one TF32 matmul over operands concatenated along the inner
    dimension (the output is written once); what it drops, lo.lo and the TF32 rounding of lo,
    is ~2^-21 of each product, where a plain TF32 matmul drops ~2^-11 (tested against fp64).
    """
    lh, ll = tf32_split(left)
    rh, rl = tf32_split(right)
    a, b = torch.cat([lh, lh, ll], 1), torch.cat([rh, rl, rh], 1)
    with backend_flag(torch.backends.cuda.matmul, "allow_tf32", True):
        return a @ b.T


def shifted_distances(patches: torch.Tensor, memory: torch.Tensor, split_tf32: bool = False) -> torch.Tensor:
    """||c||^2 - 2 p.c for every patch (rows) and memory item (columns): the squared distance
    less ||p||^2, which orders each row the same. Always in fp32, also under bf16 autocast:
    the expansion cancels, so bf16 would lose the small distances that decide the nearest items.

    One matmul of augmented operands, [p, 1, 0..] . [-2c, ||c||^2, 0..] (width rounded up to a
    multiple of 4 for aligned kernels), writes the matrix once: an `addmm` with a broadcast
    ||p||^2 + ||c||^2 term materialises that term, copies it into the output and reads it
    back, three extra passes over the largest tensor of the step. `split_tf32` computes that
    matmul by `matmul_3xtf32` (fp32 operands only).
    """
    with torch.autocast(device_type=patches.device.type, enabled=False):
        p, c = _wide(patches), _wide(memory)
        d = p.shape[1]
        extra = round_up(d + 1, 4) - d - 1  # built by cat and pad, not sized by the batch: it traces and exports
        left = F.pad(torch.cat([p, torch.ones_like(p[:, :1])], 1), (0, extra))
        right = F.pad(torch.cat([c * -2, (c * c).sum(1, keepdim=True)], 1), (0, extra))
        return matmul_3xtf32(left, right) if split_tf32 else left @ right.T


def squared_distances(patches: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """||p - c||^2 for every patch (rows) and memory item (columns), in fp32 or wider."""
    p = _wide(patches)
    return shifted_distances(p, memory).add_((p * p).sum(1, keepdim=True))


MIN_PASSES = 8  # up to this many neighbours, repeated min passes beat topk's radix select


def smallest(dist2: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The n smallest entries of each row, ascending, and their columns. Overwrites `dist2`.

    Methods ask for a handful of neighbours among thousands of items: n passes of `min`,
    each masking what it found, read the matrix n times, where `topk` reads it more.
    """
    if n > dist2.shape[1]:
        raise ValueError(f"asked for the {n} nearest of only {dist2.shape[1]} memory items")
    if n > MIN_PASSES:
        return dist2.topk(n, dim=1, largest=False)
    values, index = [], []
    for _ in range(n):
        v, i = dist2.min(1, keepdim=True)
        values.append(v)
        index.append(i)
        dist2.scatter_(1, i, float("inf"))
    return torch.cat(values, 1), torch.cat(index, 1)


class _Nearest(torch.autograd.Function):
    """Squared distances to each patch's n nearest memory items, with a sparse backward.

    The gradient of ||p - c||^2 is 2 (p - c) for the n chosen items only, gathered by
    `embedding_bag`: no dense (patches x items) gradient and no second matmul. The
    memory bank is fixed and gets no gradient.
    """

    @staticmethod
    def forward(ctx, patches: torch.Tensor, memory: torch.Tensor, n: int, split_tf32: bool) -> torch.Tensor:
        values, index = smallest(shifted_distances(patches, memory, split_tf32), n)
        ctx.save_for_backward(patches, memory, index)
        p = _wide(patches)
        return values.add_((p * p).sum(1, keepdim=True))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        patches, memory, index = ctx.saved_tensors
        p = _wide(patches)
        grad = grad.to(p.dtype)
        pulled = F.embedding_bag(index, memory.to(p.dtype), per_sample_weights=grad, mode="sum")
        return (2 * (p * grad.sum(1, keepdim=True) - pulled)).to(patches.dtype), None, None, None


def nearest_distances(patches: torch.Tensor, memory: torch.Tensor, n: int, split_tf32: bool = False) -> torch.Tensor:
    """(P, n) squared distances from each patch to its n nearest memory items, ascending, in fp32 or wider.

    Differentiable in `patches` (sparse backward) when they require a gradient; otherwise plain
    tensor operations, which tracing and ONNX export can follow.
    """
    if torch.is_grad_enabled() and patches.requires_grad:
        return _Nearest.apply(patches, memory, n, split_tf32)
    if n > memory.shape[0]:
        raise ValueError(f"asked for the {n} nearest of only {memory.shape[0]} memory items")
    p = _wide(patches)
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        values = shifted_distances(patches, memory).topk(n, dim=1, largest=False).values
    else:
        values = smallest(shifted_distances(patches, memory, split_tf32), n)[0]
    return values + (p * p).sum(1, keepdim=True)


DISTANCE_BYTES = 2**28  # the largest block of (patches x items) distances `nearest` writes at once, eagerly


def _tracing() -> bool:
    """Whether the call is being traced or exported, where every shape must stay symbolic."""
    return (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting()
            or torch.compiler.is_compiling())


def _nearest_block(patches: torch.Tensor, memory: torch.Tensor, n: int,
                   split_tf32: bool) -> tuple[torch.Tensor, torch.Tensor]:
    shifted = shifted_distances(patches, memory, split_tf32)
    if n == 1:
        index = shifted.argmin(1, keepdim=True)
    elif _tracing():
        index = shifted.topk(n, dim=1, largest=False).indices
    else:
        index = smallest(shifted, n)[1]
    p = _wide(patches)
    return (p[:, None, :] - memory[index].to(p.dtype)).square().sum(2), index


def nearest(patches: torch.Tensor, memory: torch.Tensor, n: int = 1, split_tf32: bool = False,
            max_bytes: int = DISTANCE_BYTES) -> tuple[torch.Tensor, torch.Tensor]:
    """The n nearest memory items of each patch: (P, n) squared distances, in fp32 or wider, and
    their (P, n) indices, in the search's ascending order. No gradient: a scoring path.

    The items are found by `shifted_distances` and min passes; their distances are then
    recomputed from the items themselves, ||p - c||^2 over (P, n, D) differences, so that a
    patch close to its item (a training patch: distance 0) keeps its digits, which the
    expansion's cancellation loses (a distance's square root magnifies that loss).
    Eagerly, the patches go in row blocks whose distances and differences stay within
    `max_bytes`: beyond the inputs, memory is that block, the augmented copy of the bank
    (M (D + 4) floats, three times that with `split_tf32`) and the (P, n) results, whatever P;
    time O(P M D). Traced or exported, one block, which the caller's batch size sizes.
    """
    if n > memory.shape[0]:
        raise ValueError(f"asked for the {n} nearest of only {memory.shape[0]} memory items")
    if _tracing():
        return _nearest_block(patches, memory, n, split_tf32)
    rows = max(1, max_bytes // (4 * (memory.shape[0] + n * memory.shape[1])))
    if patches.shape[0] <= rows:
        return _nearest_block(patches, memory, n, split_tf32)
    blocks = [_nearest_block(patches[s: s + rows], memory, n, split_tf32) for s in range(0, patches.shape[0], rows)]
    return torch.cat([v for v, _ in blocks]), torch.cat([i for _, i in blocks])
