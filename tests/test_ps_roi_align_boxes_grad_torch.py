"""ps_roi_align's gradient with respect to the boxes on torch tensors: autograd (the eager route and
the custom ops), double backward, opcheck and compile. The values are the NumPy kernel's
(tests/test_ps_roi_align_boxes_grad.py)."""

from __future__ import annotations

import numpy as np
import pytest

from .roi_family import OpLog, make_input, torch

# roi_family skips this module without torch, so it is imported first
# isort: split

import roipool  # noqa: E402

from .test_roi_align_boxes_grad_numpy import edge_rois, inner_rois  # noqa: E402

SIZE = (3, 2)
SHAPE = (2, 2 * 3 * 2, 9, 11)  # 2 output channels


def all_rois(seed=1):
    rois = np.concatenate([edge_rois(2, 9, 11, 0.5, 8, seed), inner_rois(2, 9, 11, 0.5, 6, seed + 1)])
    return rois[np.argsort(rois[:, 0], kind="stable")]


@pytest.mark.parametrize("route", ["eager", "ops"])
@pytest.mark.parametrize("dtype, layout", [(torch.float32, "channels_last"), (torch.float64, "contiguous")])
@pytest.mark.parametrize("boxes_format", ["tensor", "list"])
def test_boxes_grad_is_the_numpy_kernels(route, dtype, layout, boxes_format):
    x = make_input(SHAPE, dtype, layout, seed=1).requires_grad_()
    rois = all_rois()
    if boxes_format == "tensor":
        boxes = torch.from_numpy(rois).to(dtype).requires_grad_()
        params = [boxes]
    else:
        boxes = [torch.from_numpy(rois[rois[:, 0] == i, 1:]).to(dtype).requires_grad_() for i in range(2)]
        params = boxes
    with OpLog() if route == "ops" else _nothing() as log:  # a dispatch mode: the ops' route
        out = roipool.ps_roi_align(x, boxes, SIZE, 0.5, -1)
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(4)).to(dtype)
        out.backward(grad)
    if route == "ops":
        assert "roipool::ps_roi_align_boxes_backward" in log.called
    got = np.concatenate([p.grad.numpy() for p in params])
    cdt = np.float64 if dtype == torch.float64 else np.float32
    want = roipool.ps_roi_align_boxes_backward(grad.numpy(), x.detach().numpy(), rois.astype(cdt), SIZE, 0.5, -1)
    np.testing.assert_array_equal(got, want if boxes_format == "tensor" else want[:, 1:])
    assert all(p.grad.dtype == dtype for p in params)
    assert np.abs(want[:, 1:]).max() > 0


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("sampling_ratio", [2, -1])
def test_gradcheck_float64_input_and_boxes(sampling_ratio):
    x = make_input((2, 6, 7, 8), torch.float64, "contiguous", seed=5).requires_grad_()
    rois = torch.from_numpy(inner_rois(2, 7, 8, 0.5, k=4, seed=6))
    coords = rois[:, 1:].clone().requires_grad_()

    def f(t, c):
        return roipool.ps_roi_align(t, torch.cat([rois[:, :1], c], dim=1), (3, 2), 0.5, sampling_ratio)

    assert torch.autograd.gradcheck(lambda c: f(x.detach(), c), (coords,))
    assert torch.autograd.gradcheck(f, (x, coords), fast_mode=True)


@pytest.mark.parametrize("wants", ["input", "boxes", "both"])
def test_each_gradient_is_computed_only_when_wanted(wants):
    x = make_input(SHAPE, torch.float32, "contiguous").requires_grad_(wants != "boxes")
    boxes = torch.from_numpy(inner_rois(2, 9, 11, 0.5, 5, 7)).float().requires_grad_(wants != "input")
    with OpLog() as log:
        roipool.ps_roi_align(x, boxes, SIZE, 0.5, 2).sum().backward()
    assert ("roipool::ps_roi_align_backward" in log.called) == (wants != "boxes")
    assert ("roipool::ps_roi_align_boxes_backward" in log.called) == (wants != "input")
    assert (x.grad is not None) == (wants != "boxes") and (boxes.grad is not None) == (wants != "input")


def test_double_backward_through_the_boxes_says_it_is_not_supported():
    x = make_input(SHAPE, torch.float64, "contiguous").requires_grad_()
    boxes = torch.tensor([[0, 1.3, 1.1, 4.7, 5.2]], dtype=torch.float64, requires_grad=True)
    out = roipool.ps_roi_align(x, boxes, SIZE, 1.0, 2)
    (g,) = torch.autograd.grad(out.square().sum(), boxes, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward through the boxes is not supported"):
        g.sum().backward()


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_double_backward_through_the_input_gradient_reaches_the_boxes(layout):
    # <backward(g, boxes), v> is <g, forward(v, boxes)>: its box gradient is the forward's at input v,
    # weighed by g; and its gradient with respect to g is the forward at v
    rng = np.random.default_rng(9)
    x = make_input(SHAPE, torch.float64, layout).requires_grad_()
    rois = inner_rois(2, 9, 11, 1.0, k=3, seed=4)
    boxes = torch.from_numpy(rois).requires_grad_()
    g = torch.from_numpy(rng.standard_normal((3, 2, *SIZE))).requires_grad_()
    v = torch.from_numpy(rng.standard_normal(SHAPE))
    (gx,) = torch.autograd.grad(roipool.ps_roi_align(x, boxes, SIZE, 1.0, 2), x, g, create_graph=True)
    got_boxes, got_g = torch.autograd.grad((gx * v).sum(), (boxes, g))
    want = roipool.ps_roi_align_boxes_backward(g.detach().numpy(), v.numpy(), rois, SIZE, 1.0, 2)
    np.testing.assert_allclose(got_boxes.numpy(), want, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(got_g.numpy(), roipool.ps_roi_align(v.numpy(), rois, SIZE, 1.0, 2))
    assert np.abs(want[:, 1:]).min() > 0

    def penalty(b):  # the same through NumPy's input gradient, by central differences
        return (roipool.ps_roi_align_backward(g.detach().numpy(), b, SHAPE, SIZE, 1.0, 2) * v.numpy()).sum()

    h = 1e-6
    for k, c in ((0, 1), (1, 4), (2, 2)):
        up, down = rois.copy(), rois.copy()
        up[k, c] += h
        down[k, c] -= h
        assert abs((penalty(up) - penalty(down)) / (2 * h) - want[k, c]) < 1e-6


def test_opcheck_boxes_backward():
    x = make_input(SHAPE, torch.float64, "contiguous")
    rois = torch.from_numpy(edge_rois(2, 9, 11, 0.5, 6, 8))
    grad = torch.randn((6, 2, *SIZE), dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    for args in [(grad, x, rois, 0.5, *SIZE, 2), (grad.float(), x.float(), rois, 0.5, *SIZE, -1)]:
        result = torch.library.opcheck(torch.ops.roipool.ps_roi_align_boxes_backward.default, args)
        assert set(result.values()) == {"SUCCESS"}, result


def test_compile_fullgraph_with_boxes_gradient():
    torch._dynamo.reset()
    x = make_input(SHAPE, torch.float32, "contiguous", integers=True)
    rois = torch.from_numpy(inner_rois(2, 9, 11, 0.5, 6, 10)).float()

    def step(t, r):
        return roipool.ps_roi_align(t, r, SIZE, 0.5, 2).square().sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    xe, re = x.clone().requires_grad_(), rois.clone().requires_grad_()
    xc, rc = x.clone().requires_grad_(), rois.clone().requires_grad_()
    step(xe, re).backward()
    compiled(xc, rc).backward()
    torch.testing.assert_close(rc.grad, re.grad, rtol=0, atol=0)
    torch.testing.assert_close(xc.grad, xe.grad, rtol=0, atol=0)
