"""The Triton rotated RoIAlign against the reference (the interpreter on CPU; CUDA with a GPU)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

import roipool.nn  # noqa: E402,F401  (defines the custom ops)
from roipool import reference  # noqa: E402

from .test_roi_align_rotated import random_rotated_rois  # noqa: E402

pytestmark = pytest.mark.triton

from .helpers import triton_device  # noqa: E402

DEVICE = triton_device(torch)

from roipool.triton import roi_align_rotated as rt  # noqa: E402

N, C, H, W = 2, 2, 6, 7  # one 8x8 tile: the interpreter is slow
TOL = {torch.float32: 2e-5, torch.float64: 1e-12, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def cases(seed, k=4):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W))
    rois = random_rotated_rois(rng, k, N, H, W, 0.5, max_side=12)
    rois[:, 1:5] = np.round(rois[:, 1:5] * 4) / 4
    rois[:, 5] = np.round(rois[:, 5] * 8) / 8  # exact in bfloat16
    return x, rois


@pytest.mark.parametrize(
    "dtype, sampling_ratio, aligned, clockwise",
    [
        (torch.float32, 2, True, False),
        (torch.float64, -1, False, True),
        (torch.float16, -1, True, True),
        (torch.bfloat16, 2, False, False),
    ],
    ids=str,
)
def test_forward_and_backward_match_reference(dtype, sampling_ratio, aligned, clockwise):
    x, rois = cases(1)
    xt = torch.from_numpy(x).to(dtype).to(DEVICE)
    rt_rois = torch.from_numpy(rois).to(DEVICE)
    args = (0.5, 2, 2, sampling_ratio, aligned, clockwise)
    out = rt.roi_align_rotated_forward(xt, rt_rois, *args)
    cd = np.float64 if dtype == torch.float64 else np.float32
    x_c = xt.cpu().to(torch.float64 if dtype == torch.float64 else torch.float32).numpy()
    want = reference.roi_align_rotated(x_c, rois.astype(cd), 2, 2, 0.5, sampling_ratio, aligned, clockwise)
    assert out.dtype == dtype
    tol = TOL[dtype]
    torch.testing.assert_close(out.cpu(), torch.from_numpy(want).to(dtype), rtol=tol, atol=tol)
    g = torch.from_numpy(np.random.default_rng(2).standard_normal(out.shape)).to(dtype).to(DEVICE)
    got = rt.roi_align_rotated_backward(g, rt_rois, *args, N, C, H, W)
    again = rt.roi_align_rotated_backward(g, rt_rois, *args, N, C, H, W)
    assert torch.equal(got, again)  # deterministic
    g_c = g.cpu().to(torch.float64 if dtype == torch.float64 else torch.float32).numpy()
    want_grad = reference.roi_align_rotated_backward(
        g_c, rois.astype(cd), x.shape, 0.5, sampling_ratio, aligned, clockwise
    )
    torch.testing.assert_close(got.cpu(), torch.from_numpy(want_grad).to(dtype), rtol=tol, atol=tol)


def test_large_adaptive_grid_is_clipped_like_the_cpu_path():
    import roipool

    x = np.random.default_rng(3).standard_normal((1, 2, 5, 6))
    rois = np.array([[0, 2.5, 2.0, 40.0, 20.0, 0.4], [0, 3.0, 2.5, 30.0, 0.5, 2.0]])
    want = roipool.roi_align_rotated(x, rois, 1, 1.0, -1)
    got = rt.roi_align_rotated_forward(torch.from_numpy(x).to(DEVICE), torch.from_numpy(rois).to(DEVICE), 1.0, 1, 1,
                                       -1, True, False)  # fmt: skip
    np.testing.assert_allclose(got.cpu().numpy(), want, rtol=1e-12, atol=1e-15)
    g = np.random.default_rng(4).standard_normal(want.shape)
    want_grad = roipool.roi_align_rotated_backward(g, rois, x.shape, 1, 1.0, -1)
    got_grad = rt.roi_align_rotated_backward(
        torch.from_numpy(g).to(DEVICE), torch.from_numpy(rois).to(DEVICE), 1.0, 1, 1, -1, True, False, *x.shape
    )
    np.testing.assert_allclose(got_grad.cpu().numpy(), want_grad, rtol=1e-12, atol=1e-15)


def test_a_long_box_whose_bins_meet_on_the_map_visits_only_the_samples_near_it():
    # The map lies where bin 0's last samples and bin 1's first ones are: each bin's own columns
    # near the map are a few, but the union over the bins that the forward walked was the whole
    # row, 5e4 samples (minutes here; 73 s at 1.6e4 cells, found by differential fuzzing)
    import roipool

    x = np.random.default_rng(5).standard_normal((1, 2, 4, 4))
    rois = np.array([[0, 2.0, 2.0, 1e5, 1.0, 0.0], [0, 2.0, 1.5, 1e5, 2.0, np.pi / 2]])
    want = roipool.roi_align_rotated(x, rois, (1, 2), 1.0, -1)
    got = rt.roi_align_rotated_forward(torch.from_numpy(x).to(DEVICE), torch.from_numpy(rois).to(DEVICE), 1.0, 1, 2,
                                       -1, True, False)  # fmt: skip
    assert np.abs(want).min() > 0
    np.testing.assert_allclose(got.cpu().numpy(), want, rtol=1e-12, atol=1e-20)


def test_clipping_keeps_samples_on_the_border_of_a_quarter_turned_box():
    # as tests/test_roi_align_rotated.py: cos(pi / 2) is 6e-17, so a row's columns move by 1e-16
    # per sample, and samples exactly on x = W must survive the clipping
    x = np.random.default_rng(0).standard_normal((1, 1, 33, 2))
    rois = np.array([[0, 1.5, 22.5, 42.0, 2.0, np.pi / 2]])
    want = reference.roi_align_rotated(x, rois, 2, 3, 1.0, -1, False, False)
    got = rt.roi_align_rotated_forward(torch.from_numpy(x).to(DEVICE), torch.from_numpy(rois).to(DEVICE), 1.0, 2, 3,
                                       -1, False, False)  # fmt: skip
    np.testing.assert_allclose(got.cpu().numpy(), want, rtol=1e-12, atol=1e-15)


def test_float32_box_gradient_takes_the_float64_frame_as_the_cpu_path():
    # a box from differential fuzzing whose float32 frame put a sample across a whole cell
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 4, 24, 1))).float()
    rois = torch.tensor([[0, 8.0, 248.0, 0.0, 432.0, np.pi]], dtype=torch.float32)
    args = (1 / 16, 3, 5, 3, True, True)
    g = torch.from_numpy(np.random.default_rng(1).standard_normal((1, 4, 3, 5))).float()
    want = torch.ops.roipool.roi_align_rotated_box_backward(g, x, rois, *args)
    got = rt.roi_align_rotated_box_backward(g.to(DEVICE), x.to(DEVICE), rois.to(DEVICE), *args)
    torch.testing.assert_close(got.cpu().float(), want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


@pytest.mark.parametrize("aligned, clockwise", [(True, False), (False, True)])
def test_box_gradient_matches_the_cpu_path(aligned, clockwise):
    x, rois = cases(5, k=4)
    rois[:, 3:5] = np.maximum(rois[:, 3:5], 2.5)
    args = (0.5, 2, 2, 2, aligned, clockwise)
    g = torch.from_numpy(np.random.default_rng(6).standard_normal((4, C, 2, 2)))
    xt, rt_rois = torch.from_numpy(x), torch.from_numpy(rois)
    want = torch.ops.roipool.roi_align_rotated_box_backward(g, xt, rt_rois, *args)
    got = rt.roi_align_rotated_box_backward(g.to(DEVICE), xt.to(DEVICE), rt_rois.to(DEVICE), *args)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got.cpu(), want, rtol=1e-9, atol=1e-9)


def test_box_gradient_of_huge_and_quarter_turned_boxes_is_clipped_like_the_cpu_path():
    # rows of 1500 adaptive samples, of which only those near the 5 x 6 map are visited; and a
    # quarter-turned box (cos 6e-17) whose samples on the map's border must survive the clipping
    x = torch.from_numpy(np.random.default_rng(8).standard_normal((1, 2, 5, 6)))
    g = torch.from_numpy(np.random.default_rng(9).standard_normal((3, 2, 1, 2)))
    rois = torch.tensor([[0, 2.5, 2.0, 3000.0, 2.0, 0.3], [0, 3.0, 2.5, 1500.0, 3.0, -1.2],
                         [0, 1.5, 2.5, 42.0, 2.0, np.pi / 2]], dtype=torch.float64)  # fmt: skip
    args = (1.0, 1, 2, -1, False, False)
    want = torch.ops.roipool.roi_align_rotated_box_backward(g, x, rois, *args)
    got = rt.roi_align_rotated_box_backward(g.to(DEVICE), x.to(DEVICE), rois.to(DEVICE), *args)
    assert want[:, 1:].abs().min() > 0  # every derivative is reached
    torch.testing.assert_close(got.cpu(), want, rtol=1e-9, atol=1e-9)


def test_bad_boxes_get_the_cpu_paths_errors():
    x = torch.zeros((2, 3, 5, 5), device=DEVICE)
    with pytest.raises(ValueError, match="negative size"):
        rt.roi_align_rotated_forward(x, torch.tensor([[0, 1, 1, -1, 1, 0.0]], device=DEVICE), 1.0, 2, 2, 2, True, False)
    with pytest.raises(ValueError, match=r"batch index and must be in \[0, 2\)"):
        rt.roi_align_rotated_forward(x, torch.tensor([[2, 1, 1, 1, 1, 0.0]], device=DEVICE), 1.0, 2, 2, 2, True, False)


def test_empty_boxes():
    x = torch.zeros((1, 3, 4, 4), device=DEVICE)
    out = rt.roi_align_rotated_forward(x, torch.zeros((0, 6), device=DEVICE), 1.0, 2, 2, 2, True, False)
    assert out.shape == (0, 3, 2, 2)
    grad = rt.roi_align_rotated_backward(out, torch.zeros((0, 6), device=DEVICE), 1.0, 2, 2, 2, True, False, 1, 3, 4, 4)
    assert grad.shape == x.shape and not grad.any()
