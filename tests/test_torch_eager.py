"""Eager CPU calls that want no gradient run the kernel without the custom op's dispatch
(``_torch._library.eager_route``), and training calls run the ops' kernels and backward functions
through a plain autograd function (``train_eagerly``): the same results and gradients, and
whatever watches the ops still sees them."""

from __future__ import annotations

import numpy as np
import pytest

from .roi_family import OpLog, make_input, make_rois, torch

# roi_family skips this module without torch, so it is imported first
# isort: split

import roipool  # noqa: E402
from roipool._torch import _library  # noqa: E402
from roipool._torch import roi_pool as torch_roi_pool  # noqa: E402

# op: (public call, the same through torch.ops, channels of the map, box columns)
OPS = {
    "roi_pool": (
        lambda x, r: roipool.roi_pool(x, r, (3, 2), 0.5),
        lambda x, r: torch.ops.roipool.roi_pool(x, r, 0.5, 3, 2),
        5,
        4,
    ),
    "roi_align": (
        lambda x, r: roipool.roi_align(x, r, (3, 2), 0.5, 2, True),
        lambda x, r: torch.ops.roipool.roi_align(x, r, 0.5, 3, 2, 2, True),
        5,
        4,
    ),
    "ps_roi_pool": (
        lambda x, r: roipool.ps_roi_pool(x, r, (3, 2), 0.5),
        lambda x, r: torch.ops.roipool.ps_roi_pool(x, r, 0.5, 3, 2),
        12,
        4,
    ),
    "ps_roi_align": (
        lambda x, r: roipool.ps_roi_align(x, r, (3, 2), 0.5, 2),
        lambda x, r: torch.ops.roipool.ps_roi_align(x, r, 0.5, 3, 2, 2),
        12,
        4,
    ),
    "prroi_pool": (
        lambda x, r: roipool.prroi_pool(x, r, (3, 2), 0.5),
        lambda x, r: torch.ops.roipool.prroi_pool(x, r, 0.5, 3, 2),
        5,
        4,
    ),
    "roi_align_rotated": (
        lambda x, r: roipool.roi_align_rotated(x, r, (3, 2), 0.5, 2, True, False),
        lambda x, r: torch.ops.roipool.roi_align_rotated(x, r, 0.5, 3, 2, 2, True, False),
        5,
        5,
    ),
}


def _inputs(dtype=torch.float32, layout="contiguous", op="roi_align"):
    channels, columns = OPS[op][2:]
    x = make_input((2, channels, 9, 8), dtype, layout, integers=True)  # ties for the max pooling
    rois = make_rois(2, 9, 8, 0.5, k=7, seed=3)
    if columns == 5:  # rotated: [batch, cx, cy, w, h, angle]
        centre, size = (rois[:, 1:3] + rois[:, 3:5]) / 2, np.abs(rois[:, 3:5] - rois[:, 1:3])
        angle = np.linspace(-1.0, 2.0, len(rois))[:, None]
        rois = np.concatenate([rois[:, :1], centre, size, angle], axis=1)
    return x, torch.from_numpy(rois).to(dtype)


@pytest.mark.parametrize("op", sorted(OPS))
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("grad_mode", ["plain", "no_grad", "inference_mode"])
def test_an_eager_call_gives_the_bits_and_memory_format_of_the_op(op, layout, dtype, grad_mode):
    public, through_op = OPS[op][:2]
    x, rois = _inputs(dtype, layout, op)
    if grad_mode != "plain":
        x.requires_grad_()
    ctx = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}.get(grad_mode)
    with ctx() if ctx else torch.autograd.set_grad_enabled(True):
        assert _library.eager_route(x, rois) is _library.INFERENCE
        got = public(x, rois)
        want = through_op(x, rois)
    assert got.dtype == want.dtype == dtype and not got.requires_grad
    assert torch.equal(got, want)
    assert got.stride() == want.stride()


class _Functions(torch.overrides.TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def test_the_kernel_runs_directly_only_when_nothing_watches():
    x, rois = _inputs()
    assert _library.eager_route(x, rois) is _library.INFERENCE
    assert _library.eager_route(x.clone().requires_grad_(), rois) is _library.TRAINING  # autograd wants a gradient
    assert _library.eager_route(x, rois.clone().requires_grad_()) is _library.TRAINING  # a box gradient
    assert _library.eager_route(torch.nn.Parameter(x), rois) is None  # a subclass
    assert _library.eager_route(x, torch.nn.Parameter(rois, requires_grad=False)) is None
    assert _library.eager_route(x.to("meta"), rois) is None
    assert _library.eager_route(x, rois.to("meta")) is None
    with torch.no_grad():
        assert _library.eager_route(x.clone().requires_grad_(), rois) is _library.INFERENCE
        assert _library.eager_route(x, rois.clone().requires_grad_()) is _library.INFERENCE  # nothing is recorded
    with OpLog():
        assert _library.eager_route(x, rois) is None
    with _Functions():
        assert _library.eager_route(x, rois) is None
    with torch.profiler.profile():
        assert _library.eager_route(x, rois) is None
    seen = []

    def probe(t):
        seen.append(_library.eager_route(t, rois))
        return t

    torch.func.vmap(probe)(x)
    assert seen == [None]


@pytest.mark.parametrize("op", sorted(OPS))
def test_a_dispatch_mode_and_the_profiler_still_see_the_op(op):
    public = OPS[op][0]
    x, rois = _inputs(op=op)
    with OpLog() as log:
        public(x, rois)
    assert f"roipool::{op}" in log.called
    with torch.profiler.profile() as prof:
        public(x, rois)
    assert any(event.name == f"roipool::{op}" for event in prof.events())


@pytest.mark.parametrize("op", sorted(OPS))
def test_a_call_that_wants_a_gradient_gets_the_ops_gradient(op):
    public, through_op = OPS[op][:2]
    x, rois = _inputs(torch.float64, op=op)
    x.requires_grad_()
    out = public(x, rois)
    assert out.grad_fn is not None
    (grad,) = torch.autograd.grad(out.sum(), x)
    (want,) = torch.autograd.grad(through_op(x, rois).sum(), x)
    np.testing.assert_array_equal(grad.numpy(), want.numpy())


# op: the same training call through the custom ops (the ops' own autograd)
TRAINING = {
    "roi_pool/argmax": lambda x, r: torch.ops.roipool.roi_pool_with_argmax(x, r, 0.5, 3, 2)[0],
    "roi_pool/recompute": lambda x, r: torch.ops.roipool.roi_pool(x, r, 0.5, 3, 2),
    **{op: calls[1] for op, calls in OPS.items() if op != "roi_pool"},
}


@pytest.mark.parametrize("route", sorted(TRAINING))
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_a_training_call_gives_the_bits_gradients_and_formats_of_the_ops(route, layout, dtype, monkeypatch):
    op = route.split("/")[0]
    if op == "roi_pool":  # each of roi_pool's two training routes, whichever this CPU would pick
        recompute = route.endswith("recompute")
        monkeypatch.setattr(torch_roi_pool, "recompute_pays", lambda *args: recompute)
    public, through_op = OPS[op][0], TRAINING[route]
    x, rois = _inputs(dtype, layout, op)
    x.requires_grad_()
    assert _library.eager_route(x, rois) is _library.TRAINING
    got, want = public(x, rois), through_op(x, rois)
    assert type(got.grad_fn).__name__.startswith("_Eager")  # the plain autograd function ran
    assert torch.equal(got, want) and got.stride() == want.stride()
    upstream = torch.linspace(-1, 2, got.numel(), dtype=torch.float64).reshape(got.shape).to(dtype)
    upstream.requires_grad_()
    (grad,) = torch.autograd.grad(got, x, upstream, create_graph=True)
    (grad_want,) = torch.autograd.grad(want, x, upstream, create_graph=True)
    assert torch.equal(grad, grad_want) and grad.stride() == grad_want.stride() == x.stride()
    # double backward (the backward is linear in the upstream gradient) through the differentiable
    # backward op, as through the ops
    probe = torch.linspace(0, 1, x.numel(), dtype=torch.float64).reshape(x.shape).to(dtype)
    (again,) = torch.autograd.grad((grad * probe).sum(), upstream)
    (again_want,) = torch.autograd.grad((grad_want * probe).sum(), upstream)
    assert torch.equal(again, again_want)


def test_a_training_call_skips_the_ops_only_when_nothing_watches():
    x, rois = _inputs()
    x.requires_grad_()
    assert _library.eager_route(x, rois) is _library.TRAINING
    assert _library.eager_route(x.detach(), rois) is _library.INFERENCE  # no gradient wanted
    assert _library.eager_route(x, rois.clone().requires_grad_()) is _library.TRAINING  # a box gradient too
    assert _library.eager_route(torch.nn.Parameter(x.detach()), rois) is None  # a subclass
    with torch.no_grad():
        assert _library.eager_route(x, rois) is _library.INFERENCE
    for watcher in (OpLog, _Functions, torch.profiler.profile):
        with watcher():
            assert _library.eager_route(x, rois) is None
    for op in sorted(OPS):
        x, rois = _inputs(op=op)
        x.requires_grad_()
        with OpLog() as log:
            OPS[op][0](x, rois).sum().backward()
        assert f"roipool::{op}" in log.called or f"roipool::{op}_with_argmax" in log.called
        assert any(name.startswith(f"roipool::{op}_backward") for name in log.called)
        out = OPS[op][0](x, rois)  # the plain function's forward; a watcher that starts after it
        assert type(out.grad_fn).__name__.startswith("_Eager")
        with OpLog() as log:
            out.sum().backward()
        assert any(name.startswith(f"roipool::{op}_backward") for name in log.called)  # still sees the backward


def test_an_eager_step_does_not_check_its_own_argmax_and_the_backward_op_checks_any(monkeypatch):
    monkeypatch.setattr(torch_roi_pool, "recompute_pays", lambda *args: False)  # the stored-argmax route
    checked = []
    check = torch_roi_pool.cpu.argmax_outside
    monkeypatch.setattr(torch_roi_pool.cpu, "argmax_outside", lambda *args: checked.append(1) or check(*args))
    x, rois = _inputs(torch.float64, op="roi_pool")
    x.requires_grad_()
    out = OPS["roi_pool"][0](x, rois)
    (grad,) = torch.autograd.grad(out, x, torch.ones_like(out))
    assert checked == []  # its forward made the argmax, and only autograd holds it
    (want,) = torch.autograd.grad(TRAINING["roi_pool/argmax"](x, rois), x, torch.ones_like(out))
    assert checked and torch.equal(grad, want)  # through the op, the same gradient, checked
    _, argmax = torch.ops.roipool.roi_pool_with_argmax(x.detach(), rois, 0.5, 3, 2)
    with pytest.raises(ValueError, match="argmax holds indices outside"):
        torch.ops.roipool.roi_pool_backward(torch.ones_like(out), argmax + 1000, rois, *x.shape)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int32])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("zeros", [False, True])
def test_outputs_start_on_a_cache_line_and_large_ones_come_from_numpy(dtype, channels_last, zeros):
    from roipool.cpu._simd import HUGE_FROM, HUGE_PAGE

    itemsize = torch.empty((), dtype=dtype).element_size()
    small = (3, 5, 7, 2)
    large = (2, 64, 16, HUGE_FROM // (2 * 64 * itemsize))  # exactly HUGE_FROM bytes
    for shape in (small, large):
        out = _library.new_cpu_output(shape, dtype, channels_last, zeros)
        want = torch.empty(
            shape, dtype=dtype, memory_format=torch.channels_last if channels_last else torch.contiguous_format
        )
        assert out.shape == shape and out.dtype == dtype and out.stride() == want.stride()
        assert out.data_ptr() % 64 == 0
        if zeros:
            assert not out.any()
    # a NumPy buffer (huge pages, the memory cache) from HUGE_FROM bytes on, torch's own below
    assert out.data_ptr() % HUGE_PAGE == 0
    assert _library.new_cpu_tensor(small, dtype).untyped_storage().data_ptr() % 64 == 0


def test_cpu_array_is_a_view_in_the_compute_dtype():
    x = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4).transpose(1, 2).requires_grad_()
    a = _library.cpu_array(x, torch.float32)
    assert a.ctypes.data == x.data_ptr() and a.strides == tuple(4 * s for s in x.stride())  # no copy
    b = _library.cpu_array(x, torch.float64)
    assert b.dtype == np.float64 and np.array_equal(b, a)
    assert _library.of_dtype(x, torch.float32) is x
    assert _library.of_dtype(x, torch.float64).dtype == torch.float64


FIRST_CALL_COMPILED = """
import torch, roipool
x, r = torch.randn(1, 4, 8, 8), torch.tensor([[0, 0, 0, 4, 4.0]])
for op in (roipool.roi_align, roipool.roi_pool, roipool.prroi_pool):
    torch._dynamo.reset()
    step = torch.compile(lambda x, r: op(x, r, 2, 1.0), fullgraph=True, backend="aot_eager")
    assert torch.equal(step(x, r), op(x, r, 2, 1.0))
print("ok")
"""


def test_the_first_call_of_a_process_may_be_under_torch_compile_fullgraph():
    """The public functions' lazy imports must be ones Dynamo traces (an ``importlib`` call is not)."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(roipool.__file__)))
    result = subprocess.run(
        [sys.executable, "-c", FIRST_CALL_COMPILED], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


# ops with a gradient with respect to the boxes
BOX_GRADIENTS = ["roi_align", "ps_roi_align", "prroi_pool", "roi_align_rotated"]


@pytest.mark.parametrize("op", BOX_GRADIENTS)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("wanted", ["both", "boxes"])
def test_a_training_call_with_box_gradients_gives_the_ops_gradients(op, layout, wanted):
    public, through_op = OPS[op][:2]
    x, rois = _inputs(torch.float64, layout, op)
    x.requires_grad_(wanted == "both")
    rois.requires_grad_()
    assert _library.eager_route(x, rois) is _library.TRAINING
    got, want = public(x, rois), through_op(x, rois)
    assert type(got.grad_fn).__name__.startswith("_Eager")
    assert torch.equal(got, want)
    upstream = torch.linspace(-1, 2, got.numel(), dtype=torch.float64).reshape(got.shape)
    inputs = (x, rois) if wanted == "both" else (rois,)
    grads = torch.autograd.grad(got, inputs, upstream)
    grads_want = torch.autograd.grad(want, inputs, upstream)
    for g, w in zip(grads, grads_want):
        assert torch.equal(g, w) and g.stride() == w.stride()
    assert grads[-1].abs().sum() > 0  # the boxes' gradient is there, not zeros
    out = public(x, rois)  # nothing watches this forward; a watcher that starts after it
    with OpLog() as log:
        torch.autograd.grad(out, inputs, upstream)
    assert any("box" in name and name.endswith("backward") for name in log.called)  # still sees the backward


@pytest.mark.parametrize("op", sorted(set(OPS) - set(BOX_GRADIENTS)))
def test_boxes_that_want_a_gradient_get_none_from_an_op_without_one_as_through_the_op(op):
    public, through_op = OPS[op][:2]
    x, rois = _inputs(torch.float64, op=op)
    x.requires_grad_()
    rois.requires_grad_()
    got, want = public(x, rois), through_op(x, rois)
    assert type(got.grad_fn).__name__.startswith("_Eager")
    grads = torch.autograd.grad(got.sum(), (x, rois), allow_unused=True)
    grads_want = torch.autograd.grad(want.sum(), (x, rois), allow_unused=True)
    assert torch.equal(grads[0], grads_want[0])
    assert grads[1] is None and grads_want[1] is None
