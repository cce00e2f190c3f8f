"""Triton kernels against the CPU path and the references.

On a machine without a GPU these run under the Triton interpreter
(``TRITON_INTERPRET=1``, as ``make test`` and CI set it), which executes each
program in NumPy on CPU tensors: shapes stay tiny. With a GPU (and without
the interpreter) the same tests run on CUDA tensors.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

import roipool  # noqa: E402
from roipool import reference  # noqa: E402

pytestmark = pytest.mark.triton

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
if torch.cuda.is_available() and not INTERPRET:
    DEVICE = "cuda"
elif INTERPRET:
    DEVICE = "cpu"
else:
    pytest.skip("no GPU and TRITON_INTERPRET is not set", allow_module_level=True)

from roipool import triton as rt  # noqa: E402

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
N, C, H, W, K = 2, 4, 9, 9, 6


def dtype_id(dtype):
    return str(dtype).removeprefix("torch.")


def feature_map(rng, dtype, n=N, c=C, h=H, w=W):
    x = torch.from_numpy(rng.standard_normal((n, c, h, w)).astype(np.float32)).to(dtype)
    x[0, 1, 2, 2:6] = float("nan")  # a NaN run: the first NaN of a bin wins
    x[1, 2] = 1.0  # a flat plane: ties go to the first cell in row-major order
    return x


def boxes(rng, k=K, n=N, h=H, w=W, scale=0.5):
    """Boxes in image coordinates: some off the map, one inverted, one exactly half-way."""
    img_h, img_w = h / scale, w / scale
    xs = rng.uniform(-0.4 * img_w, 1.3 * img_w, (k, 2))
    ys = rng.uniform(-0.4 * img_h, 1.3 * img_h, (k, 2))
    rois = np.column_stack([rng.integers(0, n, k), xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]])
    rois[0, 1:] = [3.0, 5.0, 9.0, 11.0]  # 1.5, 2.5 ... at scale 0.5: C rounding, away from zero
    rois[1, 1:] = [12.0, 12.0, 4.0, 4.0]  # end before start: one cell
    rois[2] = [0, 2.0, 2.0, 14.0, 8.0]  # covers the NaN run of feature_map
    return torch.from_numpy(rois)


def as_numpy32(t):
    """A tensor as a float32 NumPy array (exact for float16 and bfloat16)."""
    return t.detach().cpu().to(torch.float32 if t.dtype != torch.float64 else torch.float64).numpy()


# ---------------------------------------------------------------- roi_pool


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_roi_pool_forward_is_bit_identical_to_reference(dtype):
    rng = np.random.default_rng(1)
    x = feature_map(rng, dtype).to(DEVICE)
    rois = boxes(rng).to(dtype=dtype if dtype == torch.float64 else torch.float32, device=DEVICE)
    out, argmax = rt.roi_pool_forward(x, rois, 0.5, 3, 2)
    # float16 and bfloat16 are pooled in float32, as the CPU path does
    x32, rois32 = as_numpy32(x), as_numpy32(rois)
    expected, expected_argmax = reference.roi_pool(x32, rois32, 3, 2, 0.5)
    assert out.dtype == dtype and argmax.dtype == torch.int32
    np.testing.assert_array_equal(as_numpy32(out), expected)
    np.testing.assert_array_equal(argmax.cpu().numpy(), expected_argmax)
    assert (expected_argmax == -1).any() and np.isnan(expected).any()  # the cases are exercised
    only, none = rt.roi_pool_forward(x, rois, 0.5, 3, 2, with_argmax=False)
    assert none is None and torch.equal(only.isnan(), out.isnan())
    assert torch.equal(only.nan_to_num(), out.nan_to_num())


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_roi_pool_forward_equals_numpy_cpu_path(dtype):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    rois = boxes(rng).numpy()
    expected, expected_argmax = roipool.roi_pool_with_argmax(x, rois, (2, 3), 0.5)
    out, argmax = rt.roi_pool_forward(
        torch.from_numpy(x).to(DEVICE), torch.from_numpy(rois).to(DEVICE), 0.5, 2, 3
    )
    np.testing.assert_array_equal(out.cpu().numpy(), expected)
    np.testing.assert_array_equal(argmax.cpu().numpy(), expected_argmax)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_roi_pool_backward_is_bit_identical_to_cpu_order(dtype):
    rng = np.random.default_rng(3)
    x = feature_map(rng, dtype).nan_to_num().to(DEVICE)
    rois = boxes(rng, k=8).to(DEVICE)
    # overlapping boxes on one image, so cells receive several gradients
    rois[2:5] = torch.tensor([[1, 0.0, 0.0, 10.0, 10.0]] * 3, dtype=rois.dtype)
    out, argmax = rt.roi_pool_forward(x, rois, 0.5, 3, 3)
    grad = torch.from_numpy(rng.standard_normal(out.shape).astype(np.float32)).to(dtype).to(DEVICE)
    got = rt.roi_pool_backward(grad, rois, argmax, 0.5, 3, 3, N, C, H, W)
    again = rt.roi_pool_backward(grad, rois, argmax, 0.5, 3, 3, N, C, H, W)
    assert got.dtype == dtype and torch.equal(got, again)
    # the CPU path sums in float32 (float64 for float64) in RoI order, then rounds once
    expected = reference.roi_pool_backward(as_numpy32(grad), argmax.cpu().numpy(), as_numpy32(rois), (N, C, H, W))
    np.testing.assert_array_equal(as_numpy32(got), as_numpy32(torch.from_numpy(expected).to(dtype)))
    if dtype in (torch.float32, torch.float64):
        cpu = roipool.roi_pool_backward(grad.cpu().numpy(), argmax.cpu().numpy(), rois.cpu().numpy(), (N, C, H, W))
        np.testing.assert_array_equal(got.cpu().numpy(), cpu)
    assert (expected != 0).sum() > 10


def test_roi_pool_handles_empty_inputs():
    x = torch.zeros((1, 3, 4, 4), device=DEVICE)
    no_rois = torch.zeros((0, 5), device=DEVICE)
    out, argmax = rt.roi_pool_forward(x, no_rois, 1.0, 2, 2)
    assert out.shape == (0, 3, 2, 2) and argmax.shape == (0, 3, 2, 2)
    grad_input = rt.roi_pool_backward(out, no_rois, argmax, 1.0, 2, 2, 1, 3, 4, 4)
    assert grad_input.shape == x.shape and not grad_input.any()


def test_launchers_refuse_cpu_tensors_outside_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="CUDA tensors"):
        rt.roi_pool_forward(torch.zeros((1, 1, 2, 2)), torch.zeros((1, 5)), 1.0, 1, 1)
