"""ps_roi_pool and ps_roi_align on torch tensors: the RoI family's tester plus what is particular to them."""

from __future__ import annotations

import numpy as np
import pytest

from .roi_family import BOX_FORMATS, RoIOpTester, as_boxes, make_input, make_rois, torch

# roi_family skips this module without torch, so it is imported first
# isort: split

import roipool  # noqa: E402
import roipool.nn  # noqa: E402
from roipool import reference  # noqa: E402

from .test_checks import BAD_BOXES  # noqa: E402


class PSTester(RoIOpTester):
    """What both position-sensitive ops share: channels a multiple of the bins, a linear backward."""

    params = dict(output_size=(2, 3), spatial_scale=0.5)
    shape = (2, 12, 9, 11)  # 2 output channels x 6 bins

    @property
    def bins(self):
        ph, pw = self.params["output_size"]
        return ph * pw

    def expected_grad_fn(self, x, rois, grad, state, **params):
        return self.reference_backward(grad, rois, x.shape, **params)

    def opcheck_cases(self, x, rois):
        # the family's opcheck map has 3 channels; these ops need a multiple of the bins
        x = make_input((2, 2 * self.bins, 6, 7), torch.float64, "contiguous").requires_grad_()
        args = self.op_args(x, rois)
        out = getattr(torch.ops.roipool, self.name)(*args)
        grad = torch.randn(out.shape, dtype=x.dtype)
        backward = getattr(torch.ops.roipool, f"{self.name}_backward").default
        return [
            (getattr(torch.ops.roipool, self.name).default, args),
            (backward, (grad, *args[1:], *x.shape)),
        ]

    def test_gradcheck_float64(self):
        x = make_input((2, self.bins, 5, 6), torch.float64, "contiguous").requires_grad_()
        boxes = torch.from_numpy(make_rois(2, 5, 6, self.scale, k=6, seed=3))
        assert torch.autograd.gradcheck(lambda t: self.fn(t, boxes, **self.params), (x,))
        assert torch.autograd.gradgradcheck(lambda t: self.fn(t, boxes, **self.params), (x,))
        layer = self.make_layer(**self.params)
        assert torch.autograd.gradcheck(lambda t: layer(t, boxes), (x,), fast_mode=True)

    @pytest.mark.parametrize("boxes, error, words", BAD_BOXES)
    def test_bad_boxes(self, boxes, error, words):
        x = torch.zeros((2, self.bins, 8, 8))

        def tensor(b):
            return torch.from_numpy(b) if b.dtype.kind in "fiu" else b

        boxes = [tensor(b) for b in boxes] if isinstance(boxes, list) else tensor(boxes)
        with pytest.raises(error, match=words):
            self.fn(x, boxes, **self.params)

    def test_bad_boxes_device_and_dtype(self):
        x = torch.zeros((1, self.bins, 8, 8))
        with pytest.raises(TypeError, match="boxes must hold real numbers"):
            self.fn(x, torch.zeros((1, 5), dtype=torch.bool), **self.params)
        with pytest.raises(ValueError, match="boxes must be on the input's device"):
            self.fn(x, torch.zeros((1, 5), device="meta"), **self.params)

    def test_channels_not_a_multiple_of_the_bins(self):
        x = torch.zeros((1, self.bins + 1, 8, 8))
        with pytest.raises(ValueError, match=r"input has 7 channels.*output_size"):
            self.fn(x, torch.zeros((1, 5)), **self.params)
        with pytest.raises(ValueError, match="output_size"):  # a direct call of the op, too
            getattr(torch.ops.roipool, self.name)(x, torch.zeros((1, 5)), *self.op_args(x, None)[2:])

    @pytest.mark.parametrize("boxes_format", BOX_FORMATS)
    def test_no_nan_where_torchvision_has_nan(self, boxes_format):
        # zero-size and inverted boxes: one sample per bin, never 0 / 0
        x = make_input(self.shape, torch.float32, "contiguous").requires_grad_()
        rois = np.array([[0, 5.0, 5.0, 5.0, 5.0], [1, 9.0, 8.0, 2.0, 3.0]])
        out = self.fn(x, as_boxes(rois, boxes_format, 2, torch.float32), **self.params)
        out.sum().backward()
        assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()


class TestPSRoIPool(PSTester):
    name = "ps_roi_pool"
    train_op = infer_op = "roipool::ps_roi_pool"

    def fn(self, input, boxes, output_size, spatial_scale=1.0):
        return roipool.ps_roi_pool(input, boxes, output_size, spatial_scale)

    def make_layer(self, output_size, spatial_scale):
        return roipool.nn.PSRoIPool(output_size, spatial_scale)

    def op_args(self, x, rois):
        return (x, rois, self.scale, *self.params["output_size"])

    def expected_fn(self, x, rois, output_size, spatial_scale):
        return reference.ps_roi_pool(x, rois, *output_size, spatial_scale), None

    def reference_backward(self, grad, rois, shape, output_size, spatial_scale):
        return reference.ps_roi_pool_backward(grad, rois, shape, spatial_scale)


class TestPSRoIAlign(PSTester):
    name = "ps_roi_align"
    params = dict(output_size=(2, 3), spatial_scale=0.5, sampling_ratio=2)
    train_op = infer_op = "roipool::ps_roi_align"

    def fn(self, input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1):
        return roipool.ps_roi_align(input, boxes, output_size, spatial_scale, sampling_ratio)

    def make_layer(self, output_size, spatial_scale, sampling_ratio):
        return roipool.nn.PSRoIAlign(output_size, spatial_scale, sampling_ratio)

    def op_args(self, x, rois):
        return (x, rois, self.scale, *self.params["output_size"], self.params["sampling_ratio"])

    def expected_fn(self, x, rois, output_size, spatial_scale, sampling_ratio):
        return reference.ps_roi_align(x, rois, *output_size, spatial_scale, sampling_ratio), None

    def reference_backward(self, grad, rois, shape, output_size, spatial_scale, sampling_ratio):
        return reference.ps_roi_align_backward(grad, rois, shape, spatial_scale, sampling_ratio)

    # The kernel sums separable per-axis weights, the reference sample by
    # sample: equal up to rounding (16-bit types: one rounding of the float32 result).
    def forward_tolerance(self, dtype):
        return _align_tolerance(dtype)

    def grad_tolerance(self, dtype):
        return _align_tolerance(dtype)


def _align_tolerance(dtype):
    return {
        torch.float64: dict(rtol=1e-12, atol=1e-12),
        torch.float32: dict(rtol=1e-5, atol=1e-6),
        # one 16-bit ulp at the data's magnitude (< 4): both round a float32 result once
        torch.float16: dict(rtol=2e-3, atol=4e-3),
        torch.bfloat16: dict(rtol=1.6e-2, atol=3.2e-2),
    }[dtype]


def test_adaptive_sampling_is_the_default_of_the_function_not_the_layer():
    x = make_input((1, 4, 6, 6), torch.float64, "contiguous")
    rois = torch.tensor([[0.0, 0, 0, 5, 5]], dtype=torch.float64)
    assert torch.equal(roipool.ps_roi_align(x, rois, 2), roipool.ps_roi_align(x, rois, 2, 1.0, -1))
    with pytest.raises(TypeError):
        roipool.nn.PSRoIAlign(2, 1.0)  # torchvision's layer takes sampling_ratio explicitly too


def test_layers_match_torchvisions_interface():
    assert repr(roipool.nn.PSRoIPool((7, 7), 1 / 16)) == "PSRoIPool(output_size=(7, 7), spatial_scale=0.0625)"
    assert repr(roipool.nn.PSRoIAlign(7, 0.5, 2)) == "PSRoIAlign(output_size=7, spatial_scale=0.5, sampling_ratio=2)"
    x = make_input((2, 4 * 3, 8, 8), torch.float32, "contiguous")
    boxes = [torch.tensor([[0.0, 0, 60, 60]]), torch.tensor([[16.0, 16, 100, 90]])]
    assert torch.equal(roipool.nn.PSRoIPool(2, 1 / 8)(x, boxes), roipool.ps_roi_pool(x, boxes, 2, 1 / 8))
    assert torch.equal(roipool.nn.PSRoIAlign(2, 1 / 8, 2)(x, boxes), roipool.ps_roi_align(x, boxes, 2, 1 / 8, 2))


def test_tensor_and_numpy_paths_agree():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 8, 7, 9)).astype(np.float32)
    rois = make_rois(2, 7, 9, 0.5, k=20, seed=1)
    for fn, extra in ((roipool.ps_roi_pool, ()), (roipool.ps_roi_align, (0.5, -1))):
        args = (2, *extra) if extra else (2, 0.5)
        got = fn(torch.from_numpy(x), torch.from_numpy(rois), *args)
        np.testing.assert_array_equal(got.numpy(), fn(x, rois, *args))
