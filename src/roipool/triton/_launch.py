"""Python-side helpers shared by the Triton launchers.

Real dispatch reaches the launchers through the CUDA registration of the
torch custom ops, with CUDA tensors. Under the Triton interpreter
(``TRITON_INTERPRET=1``) every program runs in NumPy on the host, so the
launchers also accept CPU tensors there: that is how the tests exercise the
kernels without a GPU.
"""

from __future__ import annotations

import os

import torch
import triton

from .. import _checks
from .._torch import _library
from .._torch._library import SUPPORTED_DTYPES

# Lanes of one program: channels x spatial positions (a power of two each).
TILE_H = 8
TILE_W = 8

# Lanes (channels x bins, or channels x tile cells) and warps per program of the
# roi_pool and roi_align kernels. Narrow backward programs won on an H200: the
# gather is bound by the latency of its walk over the RoIs, so more programs in
# flight beat wider ones (docs/gpu.md); benchmarks/gpu/sweep.py times other values.
# "backward": "walk" (each tile program walks its image's RoIs) or "lists" (each
# tile gets the list of (RoI, bin) pairs that reach it, built first; not yet
# timed on a GPU, and it reads the list's length back, so no CUDA graph capture).
TUNING = {"forward_lanes": 512, "forward_warps": 2, "backward_lanes": 256, "backward_warps": 1, "backward": "walk"}


def interpreting() -> bool:
    """Whether Triton runs kernels in its NumPy interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def check_device(**tensors: torch.Tensor) -> torch.device:
    """The common device of ``tensors``: CUDA, or CPU under the interpreter."""
    devices = {t.device for t in tensors.values()}
    if len(devices) != 1:
        named = ", ".join(f"{name} on {t.device}" for name, t in tensors.items())
        raise ValueError(f"tensors must be on one device, got {named}")
    device = devices.pop()
    if device.type != "cuda" and not (device.type == "cpu" and interpreting()):
        raise ValueError(
            f"the Triton kernels take CUDA tensors (CPU tensors only under TRITON_INTERPRET=1), got {device}"
        )
    return device


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The compute dtype of every backend (``_checks.compute_dtype``): float32 for 16-bit floats, else ``dtype``."""
    if dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"input must be float16, bfloat16, float32 or float64, got {dtype}")
    return _library.compute_dtype(dtype)


def prepare_rois(rois: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``(K, 5)`` boxes as a contiguous tensor of the compute dtype (rounded as the CPU path rounds)."""
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise ValueError(f"rois must have shape (K, 5), got {tuple(rois.shape)}")
    return rois.to(dtype).contiguous()


def scale_tensor(spatial_scale: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``spatial_scale`` rounded to the compute dtype, as a one-element tensor.

    A Python float argument would reach a kernel as float32 (and the
    interpreter always makes it float32), which would round a float64 scale.
    A scale that overflows the dtype or rounds to 0 there is refused, as on the CPU.
    """
    _checks.scale_in_dtype(float(spatial_scale), _library.numpy_dtype(dtype))
    return torch.full((1,), float(spatial_scale), dtype=dtype, device=device)


def rois_by_image(rois: torch.Tensor, num_images: int) -> tuple[torch.Tensor, torch.Tensor]:
    """RoI indices grouped by image, ascending within each image.

    Returns ``order (K,)`` int32 and ``starts (num_images + 1,)`` int32: the
    RoIs of image ``n`` are ``order[starts[n]:starts[n + 1]]``. The sort is
    stable, so a backward kernel that walks ``order`` adds RoIs in ascending
    index order, as the CPU path does. ``torch.sort(stable=True)`` and
    ``searchsorted`` are deterministic on CUDA.
    """
    batch = rois[:, 0].to(torch.int32)
    sorted_batch, order = torch.sort(batch, stable=True)
    bounds = torch.arange(num_images + 1, dtype=torch.int32, device=rois.device)
    starts = torch.searchsorted(sorted_batch, bounds).to(torch.int32)
    return order.to(torch.int32), starts


def channel_block(channels: int, spatial: int, lanes: int = 2048) -> int:
    """Channels per program so that channels x spatial lanes stay near ``lanes``."""
    block = max(1, lanes // max(spatial, 1))
    block = min(triton_next_pow2(block), triton_next_pow2(max(channels, 1)))
    return max(block, 1)


def triton_next_pow2(n: int) -> int:
    return 1 << (max(int(n), 1) - 1).bit_length()


def box_gradient(kernel, grad, input, rois, spatial_scale, pooled, sampling_ratio, lanes, **constants):
    """``(K, 5)`` of ``rois``' dtype (column 0 zero) from a box-gradient ``kernel``: one program per
    RoI, lanes ``BLOCK_C`` of the ``lanes`` channels it sums over by ``BLOCK_P`` bins; computed in
    the input's compute dtype. ``constants`` are the kernel's own compile-time arguments."""
    device = check_device(grad=grad, input=input, rois=rois)
    dtype = compute_dtype(input.dtype)
    check_rois(rois, input.shape[0], dtype)
    prepared = prepare_rois(rois, dtype)
    k_total = prepared.shape[0]
    _, _, height, width = input.shape
    out = torch.zeros((k_total, 5), dtype=dtype, device=device)
    if k_total == 0 or lanes == 0 or height == 0 or width == 0:
        return out.to(rois.dtype)
    ph, pw = int(pooled[0]), int(pooled[1])
    block_p = triton_next_pow2(ph * pw)
    kernel[(k_total,)](
        grad.contiguous(),
        input.contiguous(),
        prepared,
        scale_tensor(spatial_scale, dtype, device),
        out,
        int(sampling_ratio),
        input.shape[0],
        lanes,
        height,
        width,
        POOLED_H=ph,
        POOLED_W=pw,
        BLOCK_C=channel_block(lanes, block_p),
        BLOCK_P=block_p,
        enable_fp_fusion=False,
        **constants,
    )
    return out.to(rois.dtype)


def check_rois(rois: torch.Tensor, num_images: int, dtype: torch.dtype) -> None:
    """Raise the CPU path's error if a batch index or a coordinate is invalid.

    Batch indices must be whole numbers in ``[0, num_images)`` (the kernels
    index the feature map with them) and coordinates finite in the compute
    dtype. The test runs on the device; reading its one-element answer is a
    device synchronisation per call (skipped during CUDA graph capture). Only on failure are the rois copied to
    the host, where ``_checks.rois_array`` words the error as the CPU path does.
    """
    if rois.shape[0] == 0 or _capturing(rois):
        return
    r = rois.detach()
    batch = r[:, 0]
    bad = (batch < 0) | (batch >= num_images)
    if batch.is_floating_point():
        bad |= ~torch.isfinite(batch) | (batch != torch.floor(batch))
    coords = r[:, 1:].to(dtype)
    bad |= ~torch.isfinite(coords).all(dim=1)
    if bool(bad.any()):
        _raise_rois_error(r, num_images, dtype)


def check_batch_index(rois: torch.Tensor, num_images: int) -> None:
    """Raise if column 0 of ``rois``, truncated to int, lies outside ``[0, num_images)`` (as the CPU backward)."""
    if rois.shape[0] == 0 or _capturing(rois):
        return
    batch = rois.detach()[:, 0].to(torch.int32)
    if bool(((batch < 0) | (batch >= num_images)).any()):
        raise ValueError(f"rois hold batch indices outside [0, {num_images})")


def _capturing(t: torch.Tensor) -> bool:
    """Inside CUDA graph capture, where reading a device value (a sync) is not allowed.

    The checks are skipped there; the forward kernels clamp the batch index so
    their reads stay in bounds, and the backward ignores RoIs of other images.
    """
    return t.is_cuda and torch.cuda.is_current_stream_capturing()


def _raise_rois_error(rois: torch.Tensor, num_images: int, dtype: torch.dtype) -> None:
    import numpy as np

    from .. import _checks

    host = rois.cpu()
    if host.dtype == torch.bfloat16:  # NumPy has no bfloat16; the widening is exact
        host = host.float()
    _checks.rois_array(host.numpy(), num_images, np.float64 if dtype == torch.float64 else np.float32)
    raise ValueError("rois hold an invalid batch index or a non-finite coordinate")  # not reached in practice


def forward_inputs(input: torch.Tensor, rois: torch.Tensor):
    """The checks and conversions every forward launcher starts with.

    Returns ``(input, rois, device, dtype)``: ``input`` contiguous, ``rois``
    ``(K, 5)`` in the compute ``dtype``, both on ``device``.
    """
    device = check_device(input=input, rois=rois)
    dtype = compute_dtype(input.dtype)
    check_rois(rois, input.shape[0], dtype)
    return input.contiguous(), prepare_rois(rois, dtype), device, dtype


def span_tables(k_total: int, pooled_height: int, pooled_width: int, device: torch.device):
    """Empty int32 ``row_span (K, PH, 2)``, ``col_span (K, PW, 2)`` and ``window (K, 4)`` for a spans kernel."""
    row_span = torch.empty((k_total, pooled_height, 2), dtype=torch.int32, device=device)
    col_span = torch.empty((k_total, pooled_width, 2), dtype=torch.int32, device=device)
    window = torch.empty((k_total, 4), dtype=torch.int32, device=device)
    return row_span, col_span, window


def tile_grid(height: int, width: int) -> tuple[int, int]:
    """``(tiles, tiles_w)``: how many ``TILE_H x TILE_W`` tiles cover an ``height x width`` plane, and per row."""
    tiles_w = triton.cdiv(width, TILE_W)
    return triton.cdiv(height, TILE_H) * tiles_w, tiles_w


def tile_lists(rois: torch.Tensor, row_span: torch.Tensor, col_span: torch.Tensor, num_images: int, height: int,
               width: int) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """For every tile of every image, the (RoI, bin) pairs whose spans meet it, in ascending (RoI, bin) order.

    ``row_span (K, PH, 2)`` and ``col_span (K, PW, 2)``: the inclusive rows
    (columns) that bin row ``ph`` (column ``pw``) of RoI ``k`` reaches
    (first > last: none). Returns ``pairs`` int32 (``k * PH * PW + p``, grouped
    by tile) and ``starts (num_images * tiles + 1,)`` int32: tile ``t`` of
    image ``n`` owns ``pairs[starts[n * tiles + t]:starts[n * tiles + t + 1]]``.
    The sort is stable, so each list keeps the walk's (RoI, then bin) order. The
    number of pairs is read back from the device (one synchronisation).
    """
    k_total, ph, _ = row_span.shape
    pw = col_span.shape[1]
    device = row_span.device
    tiles, tiles_w = tile_grid(height, width)
    shape = (k_total, ph, pw)
    r0 = row_span[:, :, None, 0].to(torch.int64).expand(shape)
    r1 = row_span[:, :, None, 1].to(torch.int64).expand(shape)
    c0 = col_span[:, None, :, 0].to(torch.int64).expand(shape)
    c1 = col_span[:, None, :, 1].to(torch.int64).expand(shape)
    first_row, first_col = (r0 // TILE_H).reshape(-1), (c0 // TILE_W).reshape(-1)
    cols = (c1 // TILE_W).reshape(-1) - first_col + 1
    rows = (r1 // TILE_H).reshape(-1) - first_row + 1
    count = torch.where(((r0 <= r1) & (c0 <= c1)).reshape(-1), rows * cols, 0)
    total = int(count.sum())
    pair = torch.repeat_interleave(torch.arange(count.numel(), device=device), count, output_size=total)
    local = torch.arange(total, device=device) - (torch.cumsum(count, 0) - count)[pair]
    tile_row = first_row[pair] + local // cols[pair]
    tile_col = first_col[pair] + local % cols[pair]
    image = rois[:, 0].to(torch.int64)[pair // (ph * pw)]
    keys, order = torch.sort(image * tiles + tile_row * tiles_w + tile_col, stable=True)
    bounds = torch.arange(num_images * tiles + 1, device=device)
    return pair[order].to(torch.int32), torch.searchsorted(keys, bounds).to(torch.int32)
