"""RoIAlign on NumPy arrays: checks, layout, and the CPU kernels.

Semantics: ``docs/semantics.md`` (roi_align) (torchvision's ``roi_align``, sample for
sample). The geometry is computed once per call (``_geometry.roi_align_taps``)
and shared by every channel.

As in ``_pool``, the pieces below the NumPy functions' checks are shared with
the torch frontend (``_torch_ops``): :class:`Taps` (the geometry and work
split of one call) and the ``launch_*`` functions, which take channels-last
inputs and caller-allocated outputs.
"""

from __future__ import annotations

import numba
import numpy as np

from . import _checks
from ._geometry import roi_align_taps
from ._pool import compute_dtype
from .cpu import roi_align as kernels
from .cpu._parallel import balanced_chunks, launch_lock
from .cpu._simd import VECTOR_BYTES

# How the kernels evaluate each RoI (``kernels.AUTO``: the cheaper way per
# RoI); the tests force each way in turn.
PATH = kernels.AUTO


class Taps:
    """The separable bilinear taps of every RoI and the split of the RoIs into balanced runs.

    ``rois (K, 5)`` are validated (``_checks.rois_array``) and in the compute
    dtype; the feature map is ``height x width``. Raises ``ValueError`` for a
    box whose scaled corners or extent overflow the compute dtype.
    :attr:`arrays` and ``bounds`` are what the kernels take.
    """

    def __init__(self, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned, height, width):
        self.pooled_h, self.pooled_w = pooled_h, pooled_w
        self.num_rois = rois.shape[0]
        scale = rois.dtype.type(spatial_scale)
        _check_scaled_boxes(rois, scale, aligned, pooled_h, pooled_w)
        (self.batch, self.hptr, self.hidx, self.hwt, self.wptr, self.widx, self.wwt, cost) = roi_align_taps(
            rois, scale, pooled_h, pooled_w, sampling_ratio, aligned, height, width
        )
        self.bounds = balanced_chunks(cost)

    @property
    def arrays(self):
        return self.batch, self.hptr, self.hidx, self.hwt, self.wptr, self.widx, self.wwt


def launch_forward(x, taps: Taps, out) -> None:
    """``out (K, C, PH * PW)`` <- RoIAlign of ``x (N, C, H, W)`` (compute dtype, any strides).

    The kernel reads the map in a channel-blocked layout (``kernels.channel_blocks``),
    a copy the size of ``x``, made here from ``(N, C, H, W)`` or channels-last
    memory directly, otherwise from a C-contiguous copy.
    """
    if not out.size:
        return
    xb = np.empty(x.shape, x.dtype)
    if x.flags.c_contiguous:
        flat, cell_step, channel_step = x.reshape(-1), 1, x.shape[2] * x.shape[3]
    elif x.transpose(0, 2, 3, 1).flags.c_contiguous:
        flat, cell_step, channel_step = x.transpose(0, 2, 3, 1).reshape(-1), x.shape[1], 1
    else:
        flat, cell_step, channel_step = np.ascontiguousarray(x).reshape(-1), 1, x.shape[2] * x.shape[3]
    with launch_lock:
        kernels.channel_blocks(flat, cell_step, channel_step, xb)
        kernels.forward(xb, *taps.arrays, taps.bounds, PATH, out)


def launch_backward(grad_out, taps: Taps, grad_in) -> None:
    """``grad_in (N, C, H, W)`` (C-contiguous) <- the adjoint applied to ``grad_out (K, C, PH * PW)``.

    Every element of ``grad_in`` is written (no zeroing needed beforehand).
    """
    if not grad_in.size:
        return
    if not grad_out.size:
        grad_in[...] = 0
        return
    images, channels = grad_in.shape[:2]
    # The RoIs of each image, in ascending order: each kernel task sums one
    # image's RoIs into its own scratch.
    order = np.argsort(taps.batch, kind="stable")
    starts = np.searchsorted(taps.batch[order], np.arange(images + 1)).astype(np.int64)
    block = channel_block(channels, images, grad_out.itemsize, numba.get_num_threads())
    with launch_lock:
        kernels.backward(grad_out, *taps.arrays, order, starts, block, PATH, grad_in)


def channel_block(channels: int, images: int, itemsize: int, threads: int) -> int:
    """Channels per backward task: a multiple of the vector lanes, at most one register block.

    Tasks are (image, channel block) pairs, split between the threads in
    contiguous runs of about equal count (as ``prange`` schedules them). The
    block chosen minimises the estimated work of the busiest thread, in
    channels, where a channel outside a full register block costs 1.5 times
    as much: it goes one vector at a time, re-reading the taps for each
    (measured 1.4 to 1.7 times slower on the vgg16 workload). Ties go to the
    wider block. Each task keeps an ``(H, W, block)`` scratch, which stays in
    L2 for maps of detection size.
    """
    lanes = VECTOR_BYTES // itemsize
    full = kernels.UNROLL * lanes
    best, best_load = lanes, None
    for block in range(full, 0, -lanes):
        widths = [min(block, channels - c0) for c0 in range(0, channels, block)] * images
        work = [w if w == full else 1.5 * w for w in widths]
        bounds = [len(work) * t // threads for t in range(threads + 1)]
        load = max(sum(work[bounds[t] : bounds[t + 1]]) for t in range(threads))
        if best_load is None or load < best_load:
            best, best_load = block, load
    return best


def _check_scaled_boxes(rois, scale, aligned, pooled_h, pooled_w):
    """Corners, extents and bin sizes must stay finite in the compute dtype.

    Only boxes beyond about 1e38 / spatial_scale (float32) overflow; the
    kernels would otherwise sample at infinite or NaN positions.
    """
    t = rois.dtype.type
    offset = t(0.5) if aligned else t(0.0)
    with np.errstate(over="ignore", invalid="ignore"):
        corners = rois[:, 1:] * scale - offset
        extents = corners[:, 2:] - corners[:, :2]
        bins = extents / np.array([pooled_w, pooled_h], rois.dtype)
    ok = np.isfinite(corners).all(axis=1) & np.isfinite(extents).all(axis=1) & np.isfinite(bins).all(axis=1)
    if not ok.all():
        k = int(np.flatnonzero(~ok)[0])
        raise ValueError(
            f"boxes: box {k} {rois[k, 1:]} times spatial_scale {scale} overflows {rois.dtype} "
            "(corners or extent not finite)"
        )


def arguments(output_size, spatial_scale, sampling_ratio, aligned):
    """Checked ``(pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned)``."""
    pooled_h, pooled_w = _checks.output_size_pair(output_size)
    scale = _checks.positive_scale(spatial_scale)
    return pooled_h, pooled_w, scale, _checks.sampling_ratio_int(sampling_ratio), _checks.flag(aligned, "aligned")


def roi_align(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    input = _checks.feature_map(input)
    n, channels, height, width = input.shape
    pooled_h, pooled_w, scale, sampling_ratio, aligned = arguments(output_size, spatial_scale, sampling_ratio, aligned)
    dtype = compute_dtype(input.dtype)
    rois = _checks.rois_array(boxes, n, dtype)
    taps = Taps(rois, scale, pooled_h, pooled_w, sampling_ratio, aligned, height, width)
    out = np.empty((rois.shape[0], channels, pooled_h * pooled_w), dtype)
    if out.size:
        launch_forward(input.astype(dtype, copy=False), taps, out)
    return out.reshape(out.shape[0], channels, pooled_h, pooled_w).astype(input.dtype, copy=False)


def roi_align_backward(
    grad_output, boxes, input_shape, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False
):
    grad_output = np.asarray(grad_output)
    if grad_output.dtype.kind != "f":
        raise TypeError(f"grad_output must have a real floating dtype, got {grad_output.dtype}")
    if grad_output.ndim != 4:
        raise ValueError(f"grad_output must have shape (K, C, pooled_h, pooled_w), got {grad_output.shape}")
    n, channels, height, width = _checks.input_shape_tuple(input_shape)
    if grad_output.shape[1] != channels:
        raise ValueError(f"grad_output has {grad_output.shape[1]} channels but input_shape has {channels}")
    pooled_h, pooled_w, scale, sampling_ratio, aligned = arguments(output_size, spatial_scale, sampling_ratio, aligned)
    if grad_output.shape[2:] != (pooled_h, pooled_w):
        raise ValueError(f"grad_output has bins {grad_output.shape[2:]} but output_size is {(pooled_h, pooled_w)}")
    dtype = compute_dtype(grad_output.dtype)
    rois = _checks.rois_array(boxes, n, dtype)
    k = grad_output.shape[0]
    if rois.shape[0] != k:
        raise ValueError(f"boxes hold {rois.shape[0]} RoIs but grad_output has {k}")
    taps = Taps(rois, scale, pooled_h, pooled_w, sampling_ratio, aligned, height, width)
    grad_in = np.empty((n, channels, height, width), dtype)
    go = np.ascontiguousarray(grad_output, dtype=dtype).reshape(k, channels, pooled_h * pooled_w)
    launch_backward(go, taps, grad_in)
    return grad_in.astype(grad_output.dtype, copy=False)
