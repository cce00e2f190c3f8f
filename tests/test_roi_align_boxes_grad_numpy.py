"""roi_align's gradient with respect to the boxes (NumPy): the reference against finite
differences of the forward, the Numba kernel against the reference."""

from __future__ import annotations

import numpy as np
import pytest

import roipool
from roipool import reference


def inner_rois(num_images, height, width, spatial_scale, k, seed):
    """Boxes well inside the map at random (non-round) positions: no sample sits on a kink."""
    rng = np.random.default_rng(seed)
    img_h, img_w = height / spatial_scale, width / spatial_scale
    x = np.sort(rng.uniform(0.05 * img_w, 0.9 * img_w, (k, 2)), axis=1)
    y = np.sort(rng.uniform(0.05 * img_h, 0.9 * img_h, (k, 2)), axis=1)
    x[:, 1] += 1.5 / spatial_scale  # more than a cell wide: the legacy one-cell rule stays off
    y[:, 1] += 1.5 / spatial_scale
    batch = rng.integers(0, num_images, k)
    return np.column_stack([batch, x[:, 0], y[:, 0], x[:, 1], y[:, 1]])


def edge_rois(num_images, height, width, spatial_scale, k, seed):
    """Every kind of box: past the edges, inverted, tiny (below a cell), huge, zero-sized."""
    rng = np.random.default_rng(seed)
    img_h, img_w = height / spatial_scale, width / spatial_scale
    x = rng.uniform(-0.4 * img_w, 1.3 * img_w, (k, 2))
    y = rng.uniform(-0.4 * img_h, 1.3 * img_h, (k, 2))
    rois = np.column_stack([rng.integers(0, num_images, k), x.min(1), y.min(1), x.max(1), y.max(1)])
    s = 1 / spatial_scale
    rois[0, 1:] = [3.1 * s, 4.2 * s, 1.3 * s, 2.4 * s]  # inverted
    rois[1, 1:] = [2.1 * s, 2.2 * s, 2.6 * s, 2.9 * s]  # under one cell
    rois[2, 1:] = [-5.3 * s, -7.1 * s, 3.1 * width * s, 2.7 * height * s]  # much larger than the map
    rois[3, 1:] = [1.7 * s, 1.3 * s, 1.7 * s, 1.3 * s]  # a point
    rois[4, 1:] = [(width - 0.7) * s, (height - 0.6) * s, (width + 0.6) * s, (height + 0.4) * s]  # far corner
    return rois


def finite_difference(x, rois, grad, output_size, spatial_scale, sampling_ratio, aligned, eps=1e-6):
    out = np.zeros(rois.shape)
    for k in range(rois.shape[0]):
        for j in range(1, 5):
            plus, minus = rois.copy(), rois.copy()
            plus[k, j] += eps
            minus[k, j] -= eps
            diff = reference.roi_align(x, plus, *output_size, spatial_scale, sampling_ratio, aligned)
            diff = diff - reference.roi_align(x, minus, *output_size, spatial_scale, sampling_ratio, aligned)
            out[k, j] = (diff * grad).sum() / (2 * eps)
    return out


@pytest.mark.parametrize("sampling_ratio, aligned", [(2, True), (3, False), (-1, True), (-1, False)])
def test_reference_is_the_derivative_of_the_forward(sampling_ratio, aligned):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 9, 11))
    rois = inner_rois(2, 9, 11, 0.5, k=5, seed=2)
    grad = rng.standard_normal((5, 3, 3, 2))
    want = finite_difference(x, rois, grad, (3, 2), 0.5, sampling_ratio, aligned)
    got = reference.roi_align_boxes_backward(x, grad, rois, 0.5, sampling_ratio, aligned)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert not got[:, 0].any() and np.abs(got[:, 1:]).min() > 0


def test_reference_clamped_samples_and_the_one_cell_rule_do_not_move():
    x = np.random.default_rng(3).standard_normal((1, 2, 6, 7))
    grad = np.ones((3, 2, 2, 2))
    rois = np.array(
        [
            [0, 2.2, 2.3, 2.6, 2.7],  # legacy: under one cell, read as one cell from (x1, y1)
            [0, -0.95, 1.2, -0.05, 4.3],  # every x in (-1, 0]: clamped to column 0
            [0, 2.1, 5.05, 4.4, 5.95],  # every y in [H - 1, H]: clamped to the last row
        ]
    )
    assert np.abs(reference.roi_align(x, rois, 2, 2, 1.0, 2, False)).min() > 0  # the samples do read the map
    got = reference.roi_align_boxes_backward(x, grad, rois, 1.0, 2, False)
    assert got[0, 1] != 0 and got[0, 2] != 0 and got[0, 3] == 0 and got[0, 4] == 0
    assert got[1, 1] == 0 and got[1, 3] == 0 and got[1, 2] != 0 and got[1, 4] != 0
    assert got[2, 2] == 0 and got[2, 4] == 0 and got[2, 1] != 0 and got[2, 3] != 0
    np.testing.assert_allclose(got, finite_difference(x, rois, grad, (2, 2), 1.0, 2, False), atol=1e-7)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("sampling_ratio, aligned", [(-1, True), (0, False), (2, True), (3, False), (1, True)])
def test_kernel_matches_reference(dtype, sampling_ratio, aligned):
    rng = np.random.default_rng(4)
    # 37 channels: a full vector block, then single vectors and single channels (float32: 16 lanes)
    x = rng.standard_normal((2, 37, 9, 11)).astype(dtype)
    rois = np.concatenate([edge_rois(2, 9, 11, 0.5, 12, 5), inner_rois(2, 9, 11, 0.5, 6, 6)])
    grad = rng.standard_normal((rois.shape[0], 37, 3, 2)).astype(dtype)
    got = roipool.roi_align_boxes_backward(grad, x, rois, (3, 2), 0.5, sampling_ratio, aligned)
    assert got.dtype == dtype and got.shape == rois.shape
    want = reference.roi_align_boxes_backward(x, grad, rois.astype(dtype), 0.5, sampling_ratio, aligned)
    tol = 1e-12 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())


def test_list_of_boxes_gets_a_list_of_gradients():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 9, 11))
    rois = inner_rois(2, 9, 11, 0.5, 6, 8)
    rois = rois[np.argsort(rois[:, 0], kind="stable")]
    boxes = [rois[rois[:, 0] == i, 1:] for i in range(2)]
    grad = rng.standard_normal((6, 3, 2, 2))
    got = roipool.roi_align_boxes_backward(grad, x, boxes, 2, 0.5, 2, True)
    want = roipool.roi_align_boxes_backward(grad, x, rois, 2, 0.5, 2, True)
    assert [g.shape for g in got] == [b.shape for b in boxes]
    np.testing.assert_array_equal(np.concatenate(got), want[:, 1:])


def test_bit_identical_for_any_thread_count():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 70, 12, 13)).astype(np.float32)
    rois = np.concatenate([edge_rois(2, 12, 13, 0.5, 30, 10), inner_rois(2, 12, 13, 0.5, 30, 11)])
    grad = rng.standard_normal((60, 70, 3, 3)).astype(np.float32)
    threads = roipool.get_num_threads()
    try:
        results = []
        for n in sorted({1, threads}):
            roipool.set_num_threads(n)
            results.append(roipool.roi_align_boxes_backward(grad, x, rois, 3, 0.5, -1, True))
    finally:
        roipool.set_num_threads(threads)
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


def test_empty_boxes_and_bad_arguments():
    x = np.zeros((1, 2, 5, 5))
    assert roipool.roi_align_boxes_backward(np.zeros((0, 2, 2, 2)), x, np.zeros((0, 5)), 2).shape == (0, 5)
    box = np.array([[0, 0, 0, 2, 2.0]])
    with pytest.raises(ValueError, match="channels"):
        roipool.roi_align_boxes_backward(np.zeros((1, 3, 2, 2)), x, box, 2)
    with pytest.raises(ValueError, match="output_size"):
        roipool.roi_align_boxes_backward(np.zeros((1, 2, 3, 2)), x, box, 2)
    with pytest.raises(ValueError, match="RoIs"):
        roipool.roi_align_boxes_backward(np.zeros((2, 2, 2, 2)), x, box, 2)
    with pytest.raises(ValueError, match="batch index"):
        roipool.roi_align_boxes_backward(np.zeros((1, 2, 2, 2)), x, np.array([[1, 0, 0, 2, 2.0]]), 2)
