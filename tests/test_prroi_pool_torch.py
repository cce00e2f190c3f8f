"""prroi_pool on torch tensors: the RoI family's tester plus the box gradient."""

from __future__ import annotations

import numpy as np
import pytest

from .roi_family import OpLog, RoIOpTester, as_boxes, make_input, make_rois, torch

# roi_family skips this module without torch, so it is imported first
# isort: split
import roipool  # noqa: E402
import roipool.nn  # noqa: E402
from roipool import reference  # noqa: E402

TOLERANCE = {
    torch.float64: dict(rtol=1e-12, atol=1e-12),
    torch.float32: dict(rtol=2e-5, atol=2e-5),
    torch.float16: dict(rtol=2e-3, atol=2e-3),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2),
}


class TestPrRoIPool(RoIOpTester):
    params = dict(output_size=(3, 2), spatial_scale=0.5)
    onnx_op_type = None  # no standard ONNX operator integrates the interpolant
    train_op = infer_op = "roipool::prroi_pool"

    def fn(self, input, boxes, output_size, spatial_scale=1.0):
        return roipool.prroi_pool(input, boxes, output_size, spatial_scale)

    def make_layer(self, output_size, spatial_scale):
        return roipool.nn.PrRoIPool(output_size, spatial_scale)

    def expected_fn(self, x, rois, output_size, spatial_scale):
        return reference.prroi_pool(x, rois, *output_size, spatial_scale), None

    def expected_grad_fn(self, x, rois, grad, state, output_size, spatial_scale):
        return reference.prroi_pool_backward(grad, rois, x.shape, spatial_scale)

    def rois(self, k=14, seed=0):
        rois = np.round(super().rois(k, seed) * 4) / 4  # exact in 16-bit dtypes
        assert np.abs(rois).max() < 64
        return rois

    def forward_tolerance(self, dtype):
        return TOLERANCE[dtype]

    def grad_tolerance(self, dtype):
        return TOLERANCE[dtype]

    def opcheck_cases(self, x, rois):
        p = self.params
        params = (p["spatial_scale"], *p["output_size"])
        grad = torch.randn((rois.shape[0], x.shape[1], *p["output_size"]), dtype=x.dtype)
        # the forward with gradients for both; the backwards are differentiable only
        # with respect to ``grad`` (the input gradient's double backward)
        return [
            (torch.ops.roipool.prroi_pool.default, (x, rois.clone().requires_grad_(), *params)),
            (torch.ops.roipool.prroi_pool_backward.default, (grad.requires_grad_(), rois, *params, *x.shape)),
            (torch.ops.roipool.prroi_pool_boxes_backward.default, (grad.detach(), x.detach(), rois, *params)),
        ]


def box_case(seed=3):
    x = make_input((2, 2, 5, 6), torch.float64, "contiguous", seed=seed)
    rois = make_rois(2, 5, 6, 0.5, k=6, seed=seed)
    rois = rois[(rois[:, 3] > rois[:, 1] + 0.5) & (rois[:, 4] > rois[:, 2] + 0.5)]  # away from zero area
    return x, rois


def test_gradcheck_input_and_boxes_float64():
    x, rois = box_case()
    batch = torch.from_numpy(rois[:, :1])  # gradcheck must not nudge the batch index
    corners = torch.from_numpy(rois[:, 1:]).requires_grad_()
    x.requires_grad_()

    def pooled(t, c):
        return roipool.prroi_pool(t, torch.cat([batch, c], dim=1), (3, 2), 0.5)

    assert torch.autograd.gradcheck(pooled, (x, corners))
    layer = roipool.nn.PrRoIPool(2, 0.5)
    assert torch.autograd.gradcheck(lambda t, c: layer(t, torch.cat([batch, c], dim=1)), (x, corners), fast_mode=True)


def test_gradcheck_boxes_as_a_list_reaches_every_element():
    x, rois = box_case(seed=5)
    parts = [torch.from_numpy(rois[rois[:, 0] == i, 1:]).requires_grad_() for i in range(2)]
    assert torch.autograd.gradcheck(lambda a, b: roipool.prroi_pool(x, [a, b], 2, 0.5), tuple(parts))
    roipool.prroi_pool(x, parts, 2, 0.5).sum().backward()
    assert all(p.grad is not None and p.grad.shape == p.shape for p in parts)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_box_gradient_matches_numpy_and_reference(dtype):
    x = make_input((2, 3, 9, 11), dtype, "channels_last", seed=7)
    rois = make_rois(2, 9, 11, 0.5, k=10, seed=7)
    boxes = torch.from_numpy(rois).to(dtype).requires_grad_()
    out = roipool.prroi_pool(x, boxes, (3, 2), 0.5)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=dtype)
    out.backward(g)
    xn = x.detach().numpy()
    want = roipool.prroi_pool_boxes_backward(g.numpy(), xn, boxes.detach().numpy(), (3, 2), 0.5)
    np.testing.assert_array_equal(boxes.grad.numpy(), want)
    ref = reference.prroi_pool_boxes_backward(g.numpy(), xn, boxes.detach().numpy(), 0.5)
    tol = dict(rtol=1e-9, atol=1e-10) if dtype == torch.float64 else dict(rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(boxes.grad.numpy(), ref, **tol)


def test_double_backward_with_respect_to_the_output_gradient():
    x, rois = box_case()
    boxes = torch.from_numpy(rois)
    g = torch.randn((len(rois), 2, 2, 2), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda gg: torch.ops.roipool.prroi_pool_backward(gg, boxes, 0.5, 2, 2, *x.shape), (g,)
    )


def test_only_the_wanted_gradient_is_computed():
    x, rois = box_case()
    for x_grad, box_grad in ((True, False), (False, True), (True, True)):
        xi = x.clone().requires_grad_(x_grad)
        boxes = torch.from_numpy(rois).requires_grad_(box_grad)
        with OpLog() as log:
            roipool.prroi_pool(xi, boxes, 2, 0.5).sum().backward()
        assert ("roipool::prroi_pool_backward" in log.called) == x_grad
        assert ("roipool::prroi_pool_boxes_backward" in log.called) == box_grad


def test_compile_fullgraph_with_box_gradients():
    torch._dynamo.reset()
    x, rois = box_case()
    per_image = as_boxes(rois, "list", 2, torch.float64)

    def step(t, b, bl):
        return roipool.prroi_pool(t, b, 2, 0.5).square().sum() + roipool.prroi_pool(t, bl, 2, 0.5).sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    grads = []
    for fn in (step, compiled):
        t = x.clone().requires_grad_()
        b = torch.from_numpy(rois).requires_grad_()
        bl = [p.clone().requires_grad_() for p in per_image]
        fn(t, b, bl).backward()
        grads.append([t.grad, b.grad, *[p.grad for p in bl]])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_worked_example_with_torch_autograd():
    # docs/prroi_pool.md, with score.backward() in place of prroi_pool_boxes_backward
    yy, xx = torch.meshgrid(torch.arange(40.0), torch.arange(48.0), indexing="ij")
    feature = torch.exp(-(((xx - 27.5) / 6) ** 2 + ((yy - 20.0) / 6) ** 2))[None, None].double()
    template = torch.full((3, 3), -1 / 8, dtype=torch.float64)
    template[1, 1] = 1.0
    box = torch.tensor([[14.0, 10.0, 30.0, 22.0]], dtype=torch.float64, requires_grad=True)
    for _ in range(41):
        score = (roipool.prroi_pool(feature, [box], 3)[0, 0] * template).sum()
        (grad,) = torch.autograd.grad(score, box)
        with torch.no_grad():
            box += 20.0 * grad
    assert round(float(score.detach()), 4) == 0.6245
    centre = [(box[0, 0] + box[0, 2]) / 2, (box[0, 1] + box[0, 3]) / 2]
    np.testing.assert_allclose([float(c.detach()) for c in centre], [27.5, 20.0], atol=0.02)


def test_layer_repr_and_list_boxes():
    layer = roipool.nn.PrRoIPool((7, 7), 1 / 16)
    assert repr(layer) == "PrRoIPool(output_size=(7, 7), spatial_scale=0.0625)"
    x = make_input((2, 3, 8, 8), torch.float32, "contiguous")
    boxes = [torch.tensor([[0.0, 0, 60, 60]]), torch.tensor([[16.0, 16, 100, 90]])]
    assert layer(x, boxes).shape == (2, 3, 7, 7)


def test_numpy_only_gradients_name_numpy_for_a_tensor_and_the_torch_function_torch_for_an_array():
    from roipool._torch import prroi_pool as torch_prroi

    x = torch.zeros((1, 1, 4, 4))
    with pytest.raises(TypeError, match=r"^input must be a NumPy array, got Tensor$"):
        roipool.prroi_pool_boxes_backward(np.zeros((1, 1, 2, 2)), x, np.zeros((1, 5)), 2)
    with pytest.raises(TypeError, match=r"^input must be a torch tensor, got ndarray$"):
        torch_prroi.prroi_pool(x.numpy(), np.zeros((1, 5)), 2)
    with pytest.raises(ValueError, match="output_size"):
        roipool.prroi_pool(x, torch.zeros((3, 5)), (1, 10**12))
