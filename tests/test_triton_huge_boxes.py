"""The Triton kernels of ``roi_align`` and ``ps_roi_align`` on huge boxes, against the CPU ops.

An adaptive grid takes ``ceil(bin size)`` samples a side. Past 2**31 of them (corners beyond
about +-1e9 cells) the kernels' int32 grid overflowed (``ps_roi_align`` gave NaN, ``roi_align``
0), and below that every sample was visited: a million per side on a box a million cells wide,
2**20 with the largest fixed ``sampling_ratio``. The kernels now cap ``roi_align``'s grid at
``2**31 - 1`` as the CPU path does (``ps_roi_align``'s is not capped there either), count the
samples in int64 (``roi_align_rotated`` too), and visit only those that can land on the map, a
run of them at one position once (``_common.sample_window``): each case runs in seconds under
the interpreter.

The values there are sums of a few samples' terms over up to 2**62 samples, and the CPU path
sums them in another order (and its box gradients in float64), so the results are compared to
a relative tolerance of the sum of the terms' magnitudes, not of the result, which may cancel.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from roipool import triton as rt  # noqa: E402  (also defines the custom ops)
from roipool.triton import roi_align_rotated  # noqa: E402

pytestmark = pytest.mark.triton

from .helpers import triton_device  # noqa: E402

DEVICE = triton_device(torch)

H, W = 6, 7  # one 8x8 tile of the backward
PH, PW = 2, 2
TOL = {torch.float32: 1e-6, torch.float64: 1e-12}
OPS = ["forward", "input_gradient", "box_gradient"]
DTYPES = [pytest.param(torch.float32, id="float32"), pytest.param(torch.float64, id="float64")]
EXTENTS = [pytest.param(e, id=f"{e:.0e}") for e in (1e9, 1e10, 1e12)] + [pytest.param(None, id="1e6_wide")]


def huge_boxes(extent, dtype):
    """Boxes (scale 1: cells) with corners about ``extent`` cells out: one corner on the map and
    the other far out either way, inverted, and across the map (``extent`` None: boxes a million
    cells wide). Where both axes reach far, one of them reaches 1e9 at most: a float32 box far
    out on both axes puts thousands of samples at each position on the map, which the CPU op's
    ``roi_align`` visits one by one (``ps_roi_align``'s: the test further down)."""
    if extent is None:
        rows = [[0, -5e5, 1.0, 5e5, 5.0], [0, 1.5, -1e6 + 3.25, 5.5, 4.0], [0, -6e5 + 0.5, -4e5, 4e5, 6e5]]
        return torch.tensor(rows, dtype=dtype)
    e = float(extent)
    f = min(e, 1e9)
    # roi_align's grid is capped at 2**31 - 1 samples a side, which are then ``step`` cells
    # apart: the fifth box puts the first of them on the map
    step = (e / PW) / min(np.ceil(e / PW), 2**31 - 1)
    rows = [
        [0, -e, 1.5, 4.0, 5.0],  # far left: the map at the end of the last column bin
        [0, 2.0, -e, 6.0, 3.5],  # far up
        [0, -e, -0.75 * f, 3.0, 4.0],  # far up and left: the map at the end of both axes
        [0, 2.5, 1.0, 0.5 * f, e],  # the map at the start of both axes
        [0, 3.0 - 0.5 * step, 1.0, e, 5.0],
        [0, 3.0, 4.0, -e, -0.5 * f],  # inverted: no sample (roi_align), one per bin (ps_roi_align)
        [0, -e, -f, e, 0.25 * f],  # across the map
    ]
    return torch.tensor(rows, dtype=dtype)


def box_terms(grad, x, on_map):
    """A bound ``(K, 1)`` on the summed magnitudes of each box gradient's terms: a sample moves by
    at most ``spatial_scale`` (1 here) along a slope of at most ``2 max|x|``, weighed by its bin's
    gradient over the bin's sample count; ``on_map`` (the op on a map of ones) is the share of a
    bin's samples that land on the map."""
    return (2 * x.abs().max() * (grad.abs() * on_map).sum((1, 2, 3)))[:, None]


def check(got, want, terms, dtype):
    """``got`` (from the device) equals the CPU op's ``want`` up to ``TOL`` of the result plus the
    summed magnitudes of its terms, ``terms``; both finite, and not all zero."""
    got = got.cpu()
    assert got.dtype == want.dtype and got.shape == want.shape
    assert torch.isfinite(got).all() and torch.isfinite(want).all()
    assert want.abs().max() > 0  # samples on the map are reached
    err = (got - want).abs()
    bound = TOL[dtype] * (want.abs() + terms)
    worst = (err - bound).argmax()
    assert (err <= bound).all(), (
        f"at {np.unravel_index(int(worst), err.shape)}: {got.flatten()[worst]} vs {want.flatten()[worst]}"
    )


def on_device(*tensors):
    return [t.to(DEVICE) for t in tensors]


def run_roi_align(op, x, rois, grad, args):
    """``(got, want, terms)`` of one of ``OPS`` for ``roi_align``: the Triton kernels' result, the CPU
    op's, and the magnitude of its terms (:func:`check`)."""
    scale, ph, pw, sampling_ratio, aligned = args
    if op == "forward":
        got = rt.roi_align_forward(*on_device(x, rois), *args)
        return got, torch.ops.roipool.roi_align(x, rois, *args), torch.ops.roipool.roi_align(x.abs(), rois, *args)
    if op == "input_gradient":
        rest = (scale, ph, pw, *x.shape, sampling_ratio, aligned)
        got = rt.roi_align_backward(*on_device(grad, rois), *rest)
        want = torch.ops.roipool.roi_align_backward(grad, rois, *rest)
        return got, want, torch.ops.roipool.roi_align_backward(grad.abs(), rois, *rest)
    got = rt.roi_align.roi_align_boxes_backward(*on_device(grad, x, rois), *args)
    want = torch.ops.roipool.roi_align_boxes_backward(grad, x, rois, *args)
    return got, want, box_terms(grad, x, torch.ops.roipool.roi_align(torch.ones_like(x), rois, *args))


def run_ps_roi_align(op, x, rois, grad, args):
    """As :func:`run_roi_align`, for ``ps_roi_align``."""
    if op == "forward":
        got = rt.ps_roi_align_forward(*on_device(x, rois), *args)
        return got, torch.ops.roipool.ps_roi_align(x, rois, *args), torch.ops.roipool.ps_roi_align(x.abs(), rois, *args)
    if op == "input_gradient":
        got = rt.ps_roi_align_backward(*on_device(grad, rois), *args, *x.shape)
        want = torch.ops.roipool.ps_roi_align_backward(grad, rois, *args, *x.shape)
        return got, want, torch.ops.roipool.ps_roi_align_backward(grad.abs(), rois, *args, *x.shape)
    got = rt.ps_roi.ps_roi_align_boxes_backward(*on_device(grad, x, rois), *args)
    want = torch.ops.roipool.ps_roi_align_boxes_backward(grad, x, rois, *args)
    return got, want, box_terms(grad, x, torch.ops.roipool.ps_roi_align(torch.ones_like(x), rois, *args))


def case(rois, dtype, channels, pooled_channels, seed):
    """A random map of ``channels`` channels and a random output gradient for ``rois``."""
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.standard_normal((1, channels, H, W))).to(dtype)
    grad = torch.from_numpy(rng.standard_normal((rois.shape[0], pooled_channels, PH, PW))).to(dtype)
    return x, grad


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("aligned", [True, False], ids=["aligned", "legacy"])
@pytest.mark.parametrize("extent", EXTENTS)
@pytest.mark.parametrize("op", OPS)
def test_roi_align_on_huge_boxes_equals_the_cpu_op(op, extent, aligned, dtype):
    rois = huge_boxes(extent, dtype)
    x, grad = case(rois, dtype, 2, 2, seed=1)
    got, want, terms = run_roi_align(op, x, rois, grad, (1.0, PH, PW, -1, aligned))
    check(got, want, terms, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("extent", EXTENTS)
@pytest.mark.parametrize("op", OPS)
def test_ps_roi_align_on_huge_boxes_equals_the_cpu_op(op, extent, dtype):
    rois = huge_boxes(extent, dtype)
    x, grad = case(rois, dtype, 2 * PH * PW, 2, seed=2)
    got, want, terms = run_ps_roi_align(op, x, rois, grad, (1.0, PH, PW, -1))
    check(got, want, terms, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("extent", [pytest.param(e, id=f"{e:.0e}") for e in (1e12, 1e15, 1e18)])
@pytest.mark.parametrize("op", ["forward", "box_gradient"])
def test_ps_roi_align_on_boxes_far_out_on_both_axes_equals_the_cpu_op(op, extent, dtype):
    # Float32 positions round together in runs of up to extent * 2**-23 samples on the map, which
    # the CPU op now visits once per run as the Triton kernels do (its box gradient took minutes at
    # 1e12). Past 2**62 samples a side (about 5e18 cells) the Triton kernels index no further and
    # differ from the CPU op (docs/gpu.md, known limits).
    e = extent
    rows = [[0, -e, -e, e, 0.25 * e], [0, -e, -0.5 * e, 3.0, 4.0], [0, e, 5.0, -e, -e], [0, -e, 1.5, e, 5.0]]
    rois = torch.tensor(rows, dtype=dtype)
    x, grad = case(rois, dtype, 2 * PH * PW, 2, seed=6)
    got, want, terms = run_ps_roi_align(op, x, rois, grad, (1.0, PH, PW, -1))
    check(got, want, terms, dtype)


# The largest sampling ratio allowed, 2**20 a side: inverted boxes a million cells long (positions
# falling with the sample index, the map at the start or at the end of a bin), and boxes of no width
# (all 2**20 samples of a side at one point: one run). Before, 2**40 samples per bin were visited.
FIXED_GRID_BOXES = [
    [0, 3.0, 4.0, -1e6, -2e6],
    [0, 1e6, 2e6, 2.5, 3.5],
    [0, 3.0, -1e6, 3.0, 5.0],
    [0, 3.0, 3.0, 3.0, 3.0],
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("name", ["roi_align", "ps_roi_align"])
def test_a_fixed_grid_of_2_to_the_20_on_huge_and_empty_boxes_equals_the_cpu_op(name, op, dtype):
    rois = torch.tensor(FIXED_GRID_BOXES, dtype=dtype)
    if name == "roi_align":
        # (aligned: the legacy rule makes an empty box a cell wide, 2**20 samples on the map)
        x, grad = case(rois, dtype, 2, 2, seed=3)
        got, want, terms = run_roi_align(op, x, rois, grad, (1.0, PH, PW, 2**20, True))
    else:
        x, grad = case(rois, dtype, 2 * PH * PW, 2, seed=4)
        got, want, terms = run_ps_roi_align(op, x, rois, grad, (1.0, PH, PW, 2**20))
    check(got, want, terms, dtype)


@pytest.mark.slow  # about 20 s under the interpreter: 2048 rows of samples, each clipped to the map
def test_roi_align_rotated_counts_more_than_2_to_the_31_samples_per_bin():
    # 2048 x 2**20 adaptive samples in the one bin: the int32 product wrapped to -2**31, so the
    # count was 1 (the backward kernels count as the forward does)
    rois = torch.tensor([[0, 3.0, 2.5, 2.0**20, 2048.0, 0.0]], dtype=torch.float64)
    x = torch.from_numpy(np.random.default_rng(5).standard_normal((1, 2, H, W)))
    args = (1.0, 1, 1, -1, True, False)
    got = roi_align_rotated.roi_align_rotated_forward(*on_device(x, rois), *args)
    want = torch.ops.roipool.roi_align_rotated(x, rois, *args)
    check(got, want, torch.ops.roipool.roi_align_rotated(x.abs(), rois, *args), torch.float64)
