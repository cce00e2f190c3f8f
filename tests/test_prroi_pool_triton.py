"""prroi_pool's Triton kernels against the CPU kernels (under ``TRITON_INTERPRET=1`` without a GPU)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

import roipool  # noqa: E402
import roipool.nn  # noqa: E402,F401

pytestmark = pytest.mark.triton

from .helpers import triton_device  # noqa: E402

DEVICE = triton_device(torch)

from roipool.triton import _register  # noqa: E402
from roipool.triton import prroi_pool as tp  # noqa: E402

TOL = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-12)}


def case(dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.standard_normal((2, 3, 6, 7))).to(dtype)
    rois = np.array(
        [
            [0, 1.3, 0.7, 9.2, 8.1],  # past the right and bottom edges
            [1, -3.0, -2.0, 3.0, 2.5],  # past the top-left corner
            [0, 2.0, 2.0, 2.0001, 3.0],  # narrow
            [1, 4.5, 3.25, 4.5000001, 3.2500001],  # tiny
            [0, 5.0, 5.0, 3.0, 3.0],  # inverted: zeros
            [1, -30.0, -30.0, -2.0, -2.0],  # wholly outside
            [1, 0.0, 0.0, 6.0, 5.0],
        ]
    )
    g = torch.from_numpy(rng.standard_normal((len(rois), 3, 2, 3))).to(dtype)
    return x, torch.from_numpy(rois).to(dtype), g


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_forward_and_both_backwards_match_the_cpu_kernels(dtype):
    x, rois, g = case(dtype)
    params = (1.0, 2, 3)
    cpu_out = torch.ops.roipool.prroi_pool(x, rois, *params)
    cpu_gx = torch.ops.roipool.prroi_pool_backward(g, rois, *params, *x.shape)
    cpu_gb = torch.ops.roipool.prroi_pool_boxes_backward(g, x, rois, *params)
    xd, rd, gd = x.to(DEVICE), rois.to(DEVICE), g.to(DEVICE)
    out = tp.prroi_pool_forward(xd, rd, *params)
    gx = tp.prroi_pool_backward(gd, rd, *params, *x.shape)
    gb = tp.prroi_pool_boxes_backward(gd, xd, rd, *params)
    torch.testing.assert_close(out.cpu(), cpu_out, **TOL[dtype])
    torch.testing.assert_close(gx.cpu(), cpu_gx, **TOL[dtype])
    tol = TOL[dtype] if dtype == torch.float64 else dict(rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(gb.cpu(), cpu_gb, **tol)
    # deterministic: the same bits again
    assert torch.equal(tp.prroi_pool_backward(gd, rd, *params, *x.shape), gx)
    assert torch.equal(tp.prroi_pool_boxes_backward(gd, xd, rd, *params), gb)


def test_half_precision_computes_in_float32():
    x, rois, _ = case(torch.float32, seed=1)
    want = torch.ops.roipool.prroi_pool(x.to(torch.float16).float(), rois, 1.0, 2, 2)
    got = tp.prroi_pool_forward(x.to(torch.float16).to(DEVICE), rois.to(DEVICE), 1.0, 2, 2)
    assert got.dtype == torch.float16
    torch.testing.assert_close(got.cpu().float(), want, rtol=2e-3, atol=2e-3)


def test_empty_box_set():
    x, _, _ = case(torch.float32)
    empty = torch.zeros((0, 5)).to(DEVICE)
    assert tp.prroi_pool_forward(x.to(DEVICE), empty, 1.0, 2, 2).shape == (0, 3, 2, 2)
    assert torch.equal(
        tp.prroi_pool_backward(torch.zeros((0, 3, 2, 2)).to(DEVICE), empty, 1.0, 2, 2, *x.shape).cpu(),
        torch.zeros(x.shape),
    )
    assert tp.prroi_pool_boxes_backward(torch.zeros((0, 3, 2, 2)).to(DEVICE), x.to(DEVICE), empty, 1.0, 2, 2).shape == (
        0,
        5,
    )


def test_the_three_ops_get_a_cuda_kernel():
    for name in ("prroi_pool", "prroi_pool_backward", "prroi_pool_boxes_backward"):
        assert name in _register.REGISTERED, _register.SKIPPED.get(name)
