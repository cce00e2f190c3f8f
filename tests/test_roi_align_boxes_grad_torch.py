"""roi_align's gradient with respect to the boxes on torch tensors: autograd, the custom op,
compile and export. The values are those of the NumPy kernel (tests/test_roi_align_boxes_grad_numpy.py)."""

from __future__ import annotations

import numpy as np
import pytest

from .roi_family import OpLog, make_input, torch

# roi_family skips this module without torch, so it is imported first
# isort: split

import roipool  # noqa: E402
from roipool import reference  # noqa: E402

from .test_roi_align_boxes_grad_numpy import edge_rois, inner_rois  # noqa: E402

PARAMS = [(2, True), (3, False)]  # (sampling_ratio, aligned)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("boxes_format", ["tensor", "list"])
def test_boxes_grad_matches_numpy_and_reference(dtype, boxes_format):
    x = make_input((2, 5, 9, 11), dtype, "channels_last", seed=1).requires_grad_()
    rois = np.concatenate([edge_rois(2, 9, 11, 0.5, 8, 2), inner_rois(2, 9, 11, 0.5, 6, 3)])
    rois = rois[np.argsort(rois[:, 0], kind="stable")]
    if boxes_format == "tensor":
        boxes = torch.from_numpy(rois).requires_grad_()  # float64 boxes with a map of another dtype
        params = [boxes]
    else:
        boxes = [torch.from_numpy(rois[rois[:, 0] == i, 1:]).to(dtype).requires_grad_() for i in range(2)]
        params = boxes
    out = roipool.roi_align(x, boxes, 3, 0.5, -1, True)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(4)).to(dtype)
    out.backward(grad)
    got = np.concatenate([p.grad.double().numpy() for p in params])
    if boxes_format == "list":
        got = np.column_stack([np.zeros(len(got)), got])
    assert all(p.grad.dtype == p.dtype for p in params)
    cdt = np.float64 if dtype == torch.float64 else np.float32
    xn = x.detach().to(torch.float64).numpy().astype(cdt)
    gn = grad.to(torch.float64).numpy().astype(cdt)
    want = roipool.roi_align_boxes_backward(gn, xn, rois.astype(cdt), 3, 0.5, -1, True)
    if dtype == torch.float16:
        np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3 * np.abs(want).max())
    else:
        np.testing.assert_array_equal(got.astype(cdt), want)  # float64 boxes get the unrounded value
    ref = reference.roi_align_boxes_backward(xn, gn, rois.astype(cdt), 0.5, -1, True)
    np.testing.assert_allclose(got, ref, rtol=2e-3, atol=2e-3 * np.abs(ref).max())


@pytest.mark.parametrize("sampling_ratio, aligned", PARAMS)
def test_gradcheck_float64_input_and_boxes(sampling_ratio, aligned):
    x = make_input((2, 2, 7, 8), torch.float64, "contiguous", seed=5).requires_grad_()
    rois = torch.from_numpy(inner_rois(2, 7, 8, 0.5, k=4, seed=6))
    coords = rois[:, 1:].clone().requires_grad_()

    def f(t, c):
        return roipool.roi_align(t, torch.cat([rois[:, :1], c], dim=1), (2, 3), 0.5, sampling_ratio, aligned)

    assert torch.autograd.gradcheck(lambda c: f(x.detach(), c), (coords,))
    assert torch.autograd.gradcheck(f, (x, coords), fast_mode=True)
    per_image = [coords[:2].detach().clone().requires_grad_(), coords[2:].detach().clone().requires_grad_()]
    assert torch.autograd.gradcheck(
        lambda a, b: roipool.roi_align(x.detach(), [a, b], (2, 3), 0.5, sampling_ratio, aligned), per_image
    )


@pytest.mark.parametrize("wants", ["input", "boxes", "both"])
def test_each_gradient_is_computed_only_when_wanted(wants):
    x = make_input((2, 3, 9, 11), torch.float32, "contiguous").requires_grad_(wants != "boxes")
    boxes = torch.from_numpy(inner_rois(2, 9, 11, 0.5, 5, 7)).float().requires_grad_(wants != "input")
    with OpLog() as log:
        roipool.roi_align(x, boxes, 2, 0.5, 2, True).sum().backward()
    assert ("roipool::roi_align_backward" in log.called) == (wants != "boxes")
    assert ("roipool::roi_align_boxes_backward" in log.called) == (wants != "input")
    assert (x.grad is not None) == (wants != "boxes") and (boxes.grad is not None) == (wants != "input")


def test_double_backward_through_the_boxes_says_it_is_not_supported():
    x = make_input((1, 2, 6, 7), torch.float64, "contiguous").requires_grad_()
    boxes = torch.tensor([[0, 1.3, 1.1, 4.7, 5.2]], dtype=torch.float64, requires_grad=True)
    out = roipool.roi_align(x, boxes, 2, 1.0, 2, True)
    (g,) = torch.autograd.grad(out.square().sum(), boxes, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward through the boxes is not supported"):
        g.sum().backward()


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_double_backward_through_the_input_gradient_reaches_the_boxes(layout):
    # a penalty on the input's gradient with learnable boxes: <backward(g, boxes), v> is
    # <g, forward(v, boxes)>, so its box gradient is the forward's at input v, weighed by g
    rng = np.random.default_rng(9)
    x = make_input((1, 2, 8, 9), torch.float64, layout).requires_grad_()
    rois = inner_rois(1, 8, 9, 1.0, k=3, seed=4)
    boxes = torch.from_numpy(rois).requires_grad_()
    g = torch.from_numpy(rng.standard_normal((3, 2, 2, 3)))
    v = torch.from_numpy(rng.standard_normal((1, 2, 8, 9)))
    (gx,) = torch.autograd.grad(roipool.roi_align(x, boxes, (2, 3), 1.0, 2, True), x, g, create_graph=True)
    (got,) = torch.autograd.grad((gx * v).sum(), boxes)
    want = roipool.roi_align_boxes_backward(g.numpy(), v.numpy(), rois, (2, 3), 1.0, 2, True)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)
    assert np.abs(want[:, 1:]).min() > 0

    def penalty(b):  # the same through NumPy's input gradient, by central differences
        return (roipool.roi_align_backward(g.numpy(), b, (1, 2, 8, 9), (2, 3), 1.0, 2, True) * v.numpy()).sum()

    h = 1e-6
    for k, c in ((0, 1), (1, 4), (2, 2)):
        up, down = rois.copy(), rois.copy()
        up[k, c] += h
        down[k, c] -= h
        assert abs((penalty(up) - penalty(down)) / (2 * h) - want[k, c]) < 1e-6


def test_opcheck_boxes_backward():
    x = make_input((2, 3, 6, 7), torch.float64, "contiguous")
    rois = torch.from_numpy(edge_rois(2, 6, 7, 0.5, 6, 8))
    grad = torch.randn((6, 3, 2, 3), dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    for args in [(grad, x, rois, 0.5, 2, 3, 2, True), (grad.float(), x.float(), rois, 0.5, 2, 3, -1, False)]:
        result = torch.library.opcheck(torch.ops.roipool.roi_align_boxes_backward.default, args)
        assert set(result.values()) == {"SUCCESS"}, result


def test_compile_fullgraph_with_boxes_gradient():
    torch._dynamo.reset()
    x = make_input((2, 3, 9, 11), torch.float32, "contiguous", integers=True)
    rois = torch.from_numpy(inner_rois(2, 9, 11, 0.5, 6, 10)).float()

    def step(t, r):
        return roipool.roi_align(t, r, (3, 2), 0.5, 2, True).square().sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    xe, re = x.clone().requires_grad_(), rois.clone().requires_grad_()
    xc, rc = x.clone().requires_grad_(), rois.clone().requires_grad_()
    step(xe, re).backward()
    compiled(xc, rc).backward()
    torch.testing.assert_close(rc.grad, re.grad, rtol=0, atol=0)
    torch.testing.assert_close(xc.grad, xe.grad, rtol=0, atol=0)


def test_export_boxes_backward_op():
    class BoxesGrad(torch.nn.Module):
        def forward(self, grad, x, rois):
            return torch.ops.roipool.roi_align_boxes_backward(grad, x, rois, 0.5, 3, 2, 2, True)

    x = make_input((2, 3, 9, 11), torch.float32, "contiguous")
    rois = torch.from_numpy(inner_rois(2, 9, 11, 0.5, 6, 11)).float()
    grad = torch.randn((6, 3, 3, 2), generator=torch.Generator().manual_seed(12))
    k = torch.export.Dim.DYNAMIC
    ep = torch.export.export(BoxesGrad(), (grad, x, rois), dynamic_shapes=({0: k}, {}, {0: k}))
    targets = {str(node.target) for node in ep.graph.nodes if node.op == "call_function"}
    assert "roipool.roi_align_boxes_backward.default" in targets, targets
    other = torch.from_numpy(inner_rois(2, 9, 11, 0.5, 4, 13)).float()
    torch.testing.assert_close(ep.module()(grad[:4], x, other), BoxesGrad()(grad[:4], x, other), rtol=0, atol=0)
