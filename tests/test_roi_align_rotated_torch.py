"""roi_align_rotated on torch tensors: the RoI family's tester (rotated boxes) plus box gradients."""

from __future__ import annotations

import numpy as np
import pytest

from .roi_family import OpLog, RoIOpTester, as_boxes, make_input, torch

# roi_family skips this module without torch, so it is imported first
# isort: split
import roipool  # noqa: E402
import roipool.nn  # noqa: E402
from roipool import reference  # noqa: E402

from .test_roi_align_rotated import BAD_ROTATED_BOXES, random_rotated_rois

TOLERANCE = {
    torch.float64: dict(rtol=1e-12, atol=1e-12),
    torch.float32: dict(rtol=2e-5, atol=2e-5),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2),
}


def rotated_rois(num_images, height, width, scale, k, seed):
    """Rotated boxes sorted by image, on quarter-cell values below 64 and angles on eighths of a
    radian (all exact in bfloat16, so 16-bit boxes describe the reference's boxes)."""
    rois = random_rotated_rois(np.random.default_rng(seed), k, num_images, height, width, scale)
    rois = rois[np.argsort(rois[:, 0], kind="stable")]
    rois[:, 1:5] = np.clip(np.round(rois[:, 1:5] * 4) / 4, -63, 63)
    rois[:, 5] = np.round(rois[:, 5] * 8) / 8
    return rois


class TestRoIAlignRotated(RoIOpTester):
    params = dict(output_size=(3, 2), spatial_scale=0.5, sampling_ratio=-1, aligned=True, clockwise=False)
    train_op = infer_op = "roipool::roi_align_rotated"

    def fn(self, input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=True, clockwise=False):
        return roipool.roi_align_rotated(input, boxes, output_size, spatial_scale, sampling_ratio, aligned, clockwise)

    def make_layer(self, **params):
        return roipool.nn.RoIAlignRotated(**params)

    def expected_fn(self, x, rois, output_size, spatial_scale, sampling_ratio, aligned, clockwise):
        out = reference.roi_align_rotated(x, rois, *output_size, spatial_scale, sampling_ratio, aligned, clockwise)
        return out, None

    def expected_grad_fn(self, x, rois, grad, state, output_size, spatial_scale, sampling_ratio, aligned, clockwise):
        return reference.roi_align_rotated_backward(
            grad, rois, x.shape, spatial_scale, sampling_ratio, aligned, clockwise
        )

    def rois(self, k=14, seed=0):
        n, _, h, w = self.shape
        return rotated_rois(n, h, w, self.scale, k, seed)

    def forward_tolerance(self, dtype):
        return TOLERANCE[dtype]

    def grad_tolerance(self, dtype):
        return TOLERANCE[dtype]

    def op_args(self, x, rois):
        p = self.params
        return (p["spatial_scale"], *p["output_size"], p["sampling_ratio"], p["aligned"], p["clockwise"])

    def opcheck_cases(self, x, rois):
        args = self.op_args(x, rois)
        grad = torch.randn((rois.shape[0], x.shape[1], *self.params["output_size"]), dtype=x.dtype)
        return [
            (torch.ops.roipool.roi_align_rotated.default, (x, rois, *args)),
            (torch.ops.roipool.roi_align_rotated_backward.default, (grad, rois, *args, *x.shape)),
            (torch.ops.roipool.roi_align_rotated_box_backward.default, (grad, x.detach(), rois, *args)),
        ]

    # ---- the family's tests that spell out axis-aligned boxes, rewritten for rotated ones ----

    def test_gradcheck_float64(self):
        x = make_input((2, 2, 5, 6), torch.float64, "contiguous").requires_grad_()
        boxes = torch.from_numpy(rotated_rois(2, 5, 6, self.scale, 6, 3))
        assert torch.autograd.gradcheck(lambda t: self.fn(t, boxes, **self.params), (x,))
        layer = self.make_layer(**self.params)
        assert torch.autograd.gradcheck(lambda t: layer(t, boxes), (x,), fast_mode=True)

    def test_opcheck(self):
        x = make_input((2, 3, 6, 7), torch.float64, "contiguous").requires_grad_()
        rois = torch.from_numpy(rotated_rois(2, 6, 7, self.scale, 5, 4))
        for op, args in self.opcheck_cases(x, rois):
            result = torch.library.opcheck(op, args)
            assert set(result.values()) == {"SUCCESS"}, (op, result)

    @pytest.mark.parametrize("boxes_format", ["tensor", "list"])
    def test_empty_boxes(self, boxes_format):
        x = make_input(self.shape, torch.float32, "contiguous").requires_grad_()
        boxes = as_boxes(np.zeros((0, 6)), boxes_format, self.shape[0], torch.float32)
        out = self.fn(x, boxes, **self.params)
        assert out.shape == (0, self.shape[1], *self.params["output_size"])
        out.sum().backward()
        assert torch.equal(x.grad, torch.zeros_like(x))

    @pytest.mark.parametrize("boxes, words", BAD_ROTATED_BOXES)
    def test_bad_boxes(self, boxes, words):
        x = torch.zeros((2, 3, 8, 8))
        boxes = [torch.from_numpy(b) for b in boxes] if isinstance(boxes, list) else torch.from_numpy(boxes)
        before = [b.clone() for b in boxes] if isinstance(boxes, list) else boxes.clone()
        with pytest.raises(ValueError, match=words):
            self.fn(x, boxes, **self.params)
        torch.testing.assert_close(before, boxes, rtol=0, atol=0, equal_nan=True)

    def test_bad_boxes_device_and_dtype(self):
        x = torch.zeros((1, 3, 8, 8))
        with pytest.raises(TypeError, match="boxes must hold real numbers"):
            self.fn(x, torch.zeros((1, 6), dtype=torch.bool), **self.params)
        with pytest.raises(TypeError, match=r"boxes\[0\] must hold real numbers"):
            self.fn(x, [torch.zeros((1, 5), dtype=torch.complex64)], **self.params)
        with pytest.raises(ValueError, match="boxes must be on the input's device"):
            self.fn(x, torch.zeros((1, 6), device="meta"), **self.params)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_legacy_clockwise_fixed_grid_matches_reference(dtype):
    # the family's tests run with aligned=True, counter-clockwise, adaptive; the other modes share the kernels
    tester = TestRoIAlignRotated()
    tester.params = dict(output_size=(2, 3), spatial_scale=0.25, sampling_ratio=2, aligned=False, clockwise=True)
    x = make_input(tester.shape, dtype, "channels_last", integers=True).requires_grad_()
    rois = tester.rois()
    out = tester.fn(x, torch.from_numpy(rois).to(dtype), **tester.params)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
    out.backward(g)
    want_out, want_grad = tester.expected(x, rois, g)
    torch.testing.assert_close(out.detach(), want_out, **TOLERANCE[dtype])
    torch.testing.assert_close(x.grad, want_grad, **TOLERANCE[dtype])


# ---- gradients with respect to the boxes ----


def kink_free_boxes(rng, k, height, width, scale):
    """Boxes well inside the map whose samples avoid integer coordinates (the interpolant's kinks)."""
    rois = np.column_stack(
        [
            rng.integers(0, 2, k),
            rng.uniform(0.35, 0.65, k) * width / scale,
            rng.uniform(0.35, 0.65, k) * height / scale,
            rng.uniform(1.5, 3.0, k) / scale,
            rng.uniform(1.5, 3.0, k) / scale,
            rng.uniform(-np.pi, np.pi, k),
        ]
    )
    return rois


@pytest.mark.parametrize("aligned, clockwise", [(True, False), (False, True)])
def test_gradcheck_boxes(aligned, clockwise):
    rng = np.random.default_rng([20, aligned])
    x = torch.from_numpy(rng.standard_normal((2, 3, 9, 10)))
    rois = torch.from_numpy(kink_free_boxes(rng, 5, 9, 10, 0.5))
    batch, params = rois[:, :1], rois[:, 1:].clone().requires_grad_()

    def fn(t, p):
        return roipool.roi_align_rotated(t, torch.cat([batch, p], 1), (2, 3), 0.5, 2, aligned, clockwise)

    # every box parameter exactly; input and boxes together in fast mode (a random projection)
    assert torch.autograd.gradcheck(lambda p: fn(x, p), (params,), atol=1e-7)
    assert torch.autograd.gradcheck(fn, (x.clone().requires_grad_(), params), atol=1e-7, fast_mode=True)


def test_box_gradient_matches_reference_and_leaves_the_batch_index_alone():
    rng = np.random.default_rng(21)
    x = torch.from_numpy(rng.standard_normal((2, 20, 8, 9))).float()
    rois = kink_free_boxes(rng, 12, 8, 9, 1.0)
    boxes = torch.from_numpy(rois).float().requires_grad_()
    out = roipool.roi_align_rotated(x, boxes, (3, 3), 1.0, 2)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    out.backward(g)
    want = reference.roi_align_rotated_box_grad(x.numpy(), rois.astype(np.float32), g.numpy(), 1.0, 2, True, False)
    assert boxes.grad.dtype == torch.float32
    assert torch.equal(boxes.grad[:, 0], torch.zeros(12))
    np.testing.assert_allclose(boxes.grad[:, 1:].numpy(), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "shape, box, size, scale, ratio",
    [
        ((1, 16, 24, 1), [0, 8.0, 248.0, 0.0, 432.0, np.pi], (3, 5), 1 / 16, 3),
        ((1, 64, 13, 5), [0, 2.0, 6.0, 100.0, 76.0, np.pi / 4], (1, 1), 1 / 4, -1),
    ],
)
def test_float32_box_gradient_takes_the_float64_frame_of_the_reference(shape, box, size, scale, ratio):
    # boxes from differential fuzzing: with the forward's float32 frame (centre, size, cos, sin)
    # some samples sat a rounding across a whole cell from the float64 reference's, and the
    # gradient was off by up to half its size
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal(shape)).float()
    rois = np.array([box])
    boxes = torch.from_numpy(rois).float().requires_grad_()
    out = roipool.roi_align_rotated(x, boxes, size, scale, ratio, True, True)
    g = torch.from_numpy(rng.standard_normal(out.shape)).float()
    out.backward(g)
    want = reference.roi_align_rotated_box_grad(x.numpy(), rois.astype(np.float32), g.numpy(), scale, ratio, True, True)
    np.testing.assert_allclose(boxes.grad[:, 1:].numpy(), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_double_backward_through_the_input_gradient_reaches_the_boxes():
    # as roi_align's: the box gradient of <backward(g, boxes), v> is the forward's at input v, weighed by g
    rng = np.random.default_rng(10)
    x = torch.from_numpy(rng.standard_normal((1, 2, 8, 9))).requires_grad_()
    rois = kink_free_boxes(rng, 3, 8, 9, 1.0)
    boxes = torch.from_numpy(rois).requires_grad_()
    g = torch.from_numpy(rng.standard_normal((3, 2, 2, 3)))
    v = torch.from_numpy(rng.standard_normal((1, 2, 8, 9)))
    (gx,) = torch.autograd.grad(roipool.roi_align_rotated(x, boxes, (2, 3), 1.0, 2), x, g, create_graph=True)
    (got,) = torch.autograd.grad((gx * v).sum(), boxes)
    b2 = torch.from_numpy(rois).requires_grad_()
    (want,) = torch.autograd.grad(roipool.roi_align_rotated(v, b2, (2, 3), 1.0, 2), b2, g)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)

    def penalty(b):  # the same through NumPy's input gradient, by central differences
        return (roipool.roi_align_rotated_backward(g.numpy(), b, (1, 2, 8, 9), (2, 3), 1.0, 2) * v.numpy()).sum()

    h = 1e-6
    for k, c in ((0, 1), (1, 3), (2, 5)):
        up, down = rois.copy(), rois.copy()
        up[k, c] += h
        down[k, c] -= h
        assert abs((penalty(up) - penalty(down)) / (2 * h) - want[k, c].item()) < 1e-6


def test_box_gradient_through_a_list_of_boxes_and_adaptive_grid():
    # adaptive grid: the grid size is held constant (piecewise); boxes away from a change of grid size
    rng = np.random.default_rng(22)
    x = torch.from_numpy(rng.standard_normal((2, 2, 10, 10)))
    per_image = [torch.from_numpy(kink_free_boxes(rng, 3, 10, 10, 1.0)[:, 1:]).requires_grad_() for _ in range(2)]

    def fn(a, b):
        return roipool.roi_align_rotated(x, [a, b], 2, 1.0, -1)

    assert torch.autograd.gradcheck(fn, tuple(per_image), atol=1e-7)


def test_no_box_gradient_work_when_boxes_need_none():
    x = torch.randn(1, 2, 6, 6, requires_grad=True)
    boxes = torch.tensor([[0, 3.0, 3.0, 2.0, 2.0, 0.3]])
    with OpLog() as log:
        roipool.roi_align_rotated(x, boxes, 2).sum().backward()
    assert "roipool::roi_align_rotated_backward" in log.called
    assert "roipool::roi_align_rotated_box_backward" not in log.called


def test_torch_and_numpy_paths_give_the_same_bits():
    x = make_input((2, 5, 9, 10), torch.float32, "channels_last", seed=2)
    rois = rotated_rois(2, 9, 10, 0.5, 20, 2)
    got = roipool.roi_align_rotated(x, torch.from_numpy(rois), 3, 0.5, 2)
    np.testing.assert_array_equal(got.numpy(), roipool.roi_align_rotated(x.numpy(), rois, 3, 0.5, 2))
    g = torch.randn(got.shape, generator=torch.Generator().manual_seed(3))
    xg = x.clone().requires_grad_()
    roipool.roi_align_rotated(xg, torch.from_numpy(rois), 3, 0.5, 2).backward(g)
    np.testing.assert_array_equal(
        xg.grad.numpy(), roipool.roi_align_rotated_backward(g.numpy(), rois, x.shape, 3, 0.5, 2)
    )


def test_double_backward():
    x = make_input((1, 1, 5, 6), torch.float64, "contiguous", seed=4).requires_grad_()
    rois = torch.from_numpy(rotated_rois(1, 5, 6, 1.0, 3, 4))
    assert torch.autograd.gradgradcheck(lambda t: roipool.roi_align_rotated(t, rois, 2, 1.0, 2), (x,))


def test_layer_repr():
    layer = roipool.nn.RoIAlignRotated((7, 7), 1 / 8, 2, clockwise=True)
    assert repr(layer) == (
        "RoIAlignRotated(output_size=(7, 7), spatial_scale=0.125, sampling_ratio=2, aligned=True, clockwise=True)"
    )
