"""One tester for every op of the RoI family on torch tensors (after torchvision's ``test_ops.py``).

A subclass names the op and gives a slow, readable expected function from
``roipool.reference``; it then inherits the whole specification: values and
gradients against the reference for every dtype, memory layout, boxes format
and grad mode; ``opcheck`` on the registered custom ops; ``gradcheck`` in
float64; ``torch.compile(fullgraph=True)``; ``torch.export``; ONNX export with
both exporters run by ONNX Runtime; empty boxes; NumPy in, NumPy out; and the
core's bad-input errors through the torch path.

What a subclass provides (see ``tests/test_roi_pool_torch.py``):

- ``fn(input, boxes, **params)``: the public function under test;
- ``make_layer(**params)``: its ``roipool.nn`` layer;
- ``params``: the op's keyword arguments for these tests;
- ``expected_fn(x, rois, **params) -> (output, state)`` on NumPy arrays of the
  compute dtype, and ``expected_grad_fn(x, rois, grad, state, **params)``;
- ``train_op`` / ``infer_op``: the custom ops (``"roipool::name"``) the training
  and inference forwards call (the same op when the forward keeps no state for
  the backward); ``opcheck_cases(x, rois)``: ``[(op, args)]`` for opcheck;
- ``forward_tolerance(dtype)`` / ``grad_tolerance(dtype)`` if not exact;
- ``onnx_op_type``: the standard ONNX node the layer exports to (or None).
"""

from __future__ import annotations

import io
import operator

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import roipool  # noqa: E402
import roipool.nn  # noqa: E402,F401  (registers the custom ops)

from .test_checks import BAD_BOXES, BAD_INPUTS  # noqa: E402

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
LAYOUTS = ["contiguous", "non_contiguous", "channels_last"]
BOX_FORMATS = ["tensor", "list"]


def compute_dtype(dtype):
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


class OpLog(TorchDispatchMode):
    """A dispatch mode that records the name of every op run under it (``.called``, in order)."""

    def __init__(self):
        super().__init__()
        self.called = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.called.append(func._schema.name)
        return func(*args, **(kwargs or {}))


def to_numpy(t, dtype=None):
    """A NumPy copy of ``t`` in ``dtype`` (default: its compute dtype)."""
    return t.detach().to(dtype or compute_dtype(t.dtype)).numpy().copy()


def make_input(shape, dtype, layout, seed=0, integers=False):
    """A feature map of ``dtype`` in the given memory layout.

    ``integers`` makes small whole values (exact in every dtype), so ties
    occur and several outputs route their gradient to the same element.
    """
    g = torch.Generator().manual_seed(seed)
    if integers:
        base = torch.randint(0, 4, shape, generator=g).to(torch.float64)
    else:
        base = torch.randn(shape, generator=g, dtype=torch.float64)
    base = base.to(dtype)
    if layout == "contiguous":
        return base.contiguous()
    if layout == "channels_last":
        x = base.contiguous(memory_format=torch.channels_last)
        assert x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        return x
    # every other column of a twice-as-wide map: no layout the kernels read in place
    wide = torch.repeat_interleave(base, 2, dim=3)
    x = wide[..., ::2]
    assert not x.is_contiguous() and torch.equal(x, base)
    return x


def _bits(t):
    """``t``'s values as integers of the same width, in logical order: equality is bit for bit."""
    return t.contiguous().view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def make_rois(num_images, height, width, spatial_scale, k=14, seed=0):
    """``(K, 5)`` float64 boxes in image coordinates, some past the map's edges, one inverted."""
    rng = np.random.default_rng(seed)
    img_h, img_w = height / spatial_scale, width / spatial_scale
    x = rng.uniform(-0.3 * img_w, 1.2 * img_w, (k, 2))
    y = rng.uniform(-0.3 * img_h, 1.2 * img_h, (k, 2))
    batch = np.sort(rng.integers(0, num_images, k))
    rois = np.column_stack([batch, x.min(1), y.min(1), x.max(1), y.max(1)])
    rois[0, 1:] = [3.0 / spatial_scale, 4.0 / spatial_scale, 1.0 / spatial_scale, 2.0 / spatial_scale]  # inverted
    return rois


def as_boxes(rois, fmt, num_images, dtype):
    """``(K, 5)`` rows as the ``tensor`` format or the ``list`` of per-image ``(L, 4)`` tensors."""
    if fmt == "tensor":
        return torch.from_numpy(rois).to(dtype)
    return [torch.from_numpy(rois[rois[:, 0] == i, 1:]).to(dtype) for i in range(num_images)]


class RoIOpTester:
    """Base class: subclasses fill in the attributes listed in the module docstring."""

    params: dict = {}
    onnx_op_type: str | None = None
    shape = (2, 3, 9, 11)

    # ---- to provide ----

    def fn(self, input, boxes, **params):
        raise NotImplementedError

    def make_layer(self, **params):
        raise NotImplementedError

    def expected_fn(self, x, rois, **params):
        raise NotImplementedError

    def expected_grad_fn(self, x, rois, grad, state, **params):
        raise NotImplementedError

    train_op = infer_op = None

    def opcheck_cases(self, x, rois):
        raise NotImplementedError

    # ---- helpers ----

    @property
    def scale(self):
        return self.params.get("spatial_scale", 1.0)

    def rois(self, k=14, seed=0):
        n, _, h, w = self.shape
        return make_rois(n, h, w, self.scale, k, seed)

    def expected(self, x, rois, grad=None):
        """Expected output (and input gradient) in ``x``'s dtype, from the reference in the compute dtype."""
        xn = to_numpy(x)
        r = rois.astype(xn.dtype)
        out, state = self.expected_fn(xn, r, **self.params)
        out = torch.from_numpy(np.ascontiguousarray(out)).to(x.dtype)
        if grad is None:
            return out
        gx = self.expected_grad_fn(xn, r, to_numpy(grad), state, **self.params)
        return out, torch.from_numpy(np.ascontiguousarray(gx)).to(x.dtype)

    # ---- the specification ----

    @pytest.mark.parametrize("dtype", DTYPES, ids=str)
    @pytest.mark.parametrize("layout", LAYOUTS)
    @pytest.mark.parametrize("boxes_format", BOX_FORMATS)
    @pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
    def test_matches_reference(self, dtype, layout, boxes_format, grad):
        x = make_input(self.shape, dtype, layout, integers=grad)
        x_before = x.clone()
        rois = self.rois()
        boxes = as_boxes(rois, boxes_format, self.shape[0], dtype)
        if grad:
            x.requires_grad_()
        out = self.fn(x, boxes, **self.params)
        assert out.dtype == dtype and out.device == x.device
        if not grad:
            assert out.grad_fn is None
            torch.testing.assert_close(out, self.expected(x, rois), **self.forward_tolerance(dtype))
        else:
            g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
            out.backward(g)
            want_out, want_grad = self.expected(x, rois, g)
            torch.testing.assert_close(out.detach(), want_out, **self.forward_tolerance(dtype))
            assert x.grad.dtype == dtype and x.grad.shape == x.shape
            torch.testing.assert_close(x.grad, want_grad, **self.grad_tolerance(dtype))
        assert torch.equal(x.detach(), x_before)

    @pytest.mark.parametrize("dtype", DTYPES, ids=str)
    @pytest.mark.parametrize("grad_format", ["contiguous", "channels_last"])
    def test_channels_last_input_gives_channels_last_results_bit_for_bit(self, dtype, grad_format):
        # 49 times the channels: the kernels' full register blocks, one-vector and scalar remainders
        n, c, h, w = self.shape
        x = make_input((n, 49 * c, h, w), dtype, "channels_last", integers=True).requires_grad_()
        ref = x.detach().contiguous().requires_grad_()
        boxes = torch.from_numpy(self.rois()).to(compute_dtype(dtype))
        out = self.fn(x, boxes, **self.params)
        want = self.fn(ref, boxes, **self.params)
        assert want.is_contiguous()
        assert out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
        assert torch.equal(_bits(out), _bits(want))
        g = torch.randn(want.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
        formats = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
        out.backward(g.contiguous(memory_format=formats[grad_format]))
        want.backward(g)
        assert ref.grad.is_contiguous()
        assert x.grad.is_contiguous(memory_format=torch.channels_last) and not x.grad.is_contiguous()
        assert torch.equal(_bits(x.grad), _bits(ref.grad))

    @pytest.mark.parametrize("layout", ["contiguous", "non_contiguous"])
    def test_other_inputs_give_contiguous_results(self, layout):
        x = make_input(self.shape, torch.float32, layout, integers=True).requires_grad_()
        out = self.fn(x, torch.from_numpy(self.rois()).float(), **self.params)
        out.backward(torch.ones(out.shape).contiguous(memory_format=torch.channels_last))
        assert out.is_contiguous() and x.grad.is_contiguous()

    def forward_tolerance(self, dtype):
        """How close the output must be to the reference (exact by default: max pooling picks an input)."""
        return dict(rtol=0, atol=0)

    def grad_tolerance(self, dtype):
        """How close the input gradient must be to the reference's.

        Exact by default: roi_pool's sums run in float32 for 16-bit types and
        in RoI order, like the reference. Ops that interpolate override this.
        """
        return dict(rtol=0, atol=0)

    @pytest.mark.parametrize("boxes_dtype", [torch.float64, torch.float16, torch.int64], ids=str)
    def test_boxes_of_another_dtype_are_converted_before_scaling(self, boxes_dtype):
        x = make_input(self.shape, torch.float32, "contiguous")
        rois = np.round(self.rois() * 4) / 4  # exact in float16 and rounds in int64 below
        if boxes_dtype == torch.int64:
            rois = np.round(rois)
        boxes = torch.from_numpy(rois).to(boxes_dtype)
        got = self.fn(x, boxes, **self.params)
        torch.testing.assert_close(got, self.expected(x, boxes.double().numpy()), **self.forward_tolerance(x.dtype))

    def test_gradcheck_float64(self):
        x = make_input((2, 2, 5, 6), torch.float64, "contiguous").requires_grad_()
        boxes = torch.from_numpy(make_rois(2, 5, 6, self.scale, k=6, seed=3))
        assert torch.autograd.gradcheck(lambda t: self.fn(t, boxes, **self.params), (x,))
        layer = self.make_layer(**self.params)
        assert torch.autograd.gradcheck(lambda t: layer(t, boxes), (x,), fast_mode=True)

    def test_backward_of_expanded_gradient(self):
        # out.sum().backward() hands the backward a stride-0 gradient
        x = make_input(self.shape, torch.float32, "contiguous", integers=True).requires_grad_()
        rois = self.rois()
        self.fn(x, torch.from_numpy(rois).float(), **self.params).sum().backward()
        _, want = self.expected(x, rois, torch.ones(self.expected(x, rois).shape))
        torch.testing.assert_close(x.grad, want, **self.grad_tolerance(x.dtype))

    @pytest.mark.parametrize("mode", ["requires_grad", "no_grad", "inference_mode", "plain"])
    def test_only_training_calls_keep_state_for_backward(self, mode):
        x = make_input(self.shape, torch.float32, "contiguous")
        boxes = torch.from_numpy(self.rois()).float()
        if mode != "plain":
            x.requires_grad_()
        ctx = {"no_grad": torch.no_grad(), "inference_mode": torch.inference_mode()}.get(mode)
        with OpLog() as log:
            if ctx is None:
                self.fn(x, boxes, **self.params)
            else:
                with ctx:
                    self.fn(x, boxes, **self.params)
        want = self.train_op if mode == "requires_grad" else self.infer_op
        assert want in log.called and ({self.train_op, self.infer_op} - {want}).isdisjoint(log.called)

    @pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
    def test_opcheck(self, layout):
        x = make_input((2, 3, 6, 7), torch.float64, layout).requires_grad_()
        rois = torch.from_numpy(make_rois(2, 6, 7, self.scale, k=5, seed=4))
        for op, args in self.opcheck_cases(x, rois):
            result = torch.library.opcheck(op, args)
            assert set(result.values()) == {"SUCCESS"}, (op, result)

    @pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
    def test_compile_fullgraph_forward_and_backward(self, layout):
        torch._dynamo.reset()
        x = make_input(self.shape, torch.float32, layout, integers=True)
        boxes = torch.from_numpy(self.rois()).float()
        per_image = as_boxes(self.rois(), "list", self.shape[0], torch.float32)

        def step(t, b, bl):
            return self.fn(t, b, **self.params).sum() + self.fn(t, bl, **self.params).square().sum()

        compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
        xe = x.clone().requires_grad_()
        xc = x.clone().requires_grad_()
        step(xe, boxes, per_image).backward()
        got = compiled(xc, boxes, per_image)
        got.backward()
        torch.testing.assert_close(got, step(x, boxes, per_image), rtol=0, atol=0)
        torch.testing.assert_close(xc.grad, xe.grad, rtol=0, atol=0)
        assert xc.grad.stride() == xe.grad.stride() == x.stride()  # the gradient in the input's memory format
        with torch.no_grad():
            pooled = torch.compile(lambda t, b: self.fn(t, b, **self.params), fullgraph=True, backend="aot_eager")
            assert pooled(x, boxes).stride() == self.fn(x, boxes, **self.params).stride()
        with torch.no_grad():
            torch.testing.assert_close(compiled(x, boxes, per_image), step(x, boxes, per_image), rtol=0, atol=0)

    def test_fx_traces_the_layer_as_a_leaf_module_and_the_function_as_a_leaf(self):
        layer, fn, params = self.make_layer(**self.params), self.fn, self.params

        class Holder(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.pool = layer

            def forward(self, x, boxes):
                return self.pool(x * 2, boxes) + fn(x, boxes, **params)

        traced = torch.fx.symbolic_trace(Holder())
        calls = [(n.op, n.target) for n in traced.graph.nodes if n.op in ("call_module", "call_function")]
        public = getattr(roipool.torch, self.infer_op.split("::")[1].removesuffix("_with_argmax"))
        assert calls == [
            ("call_function", operator.mul),
            ("call_module", "pool"),
            ("call_function", public),
            ("call_function", operator.add),
        ]
        x = make_input(self.shape, torch.float32, "contiguous")
        for boxes in (
            torch.from_numpy(self.rois()).float(),
            as_boxes(self.rois(), "list", self.shape[0], torch.float32),
        ):
            torch.testing.assert_close(traced(x, boxes), Holder()(x, boxes), rtol=0, atol=0)

    def test_jit_script_of_the_layer_and_the_torch_function_equals_eager(self):
        layer = self.make_layer(**self.params)
        public = getattr(roipool.torch, self.infer_op.split("::")[1].removesuffix("_with_argmax"))
        scripted_layer = torch.jit.script(layer)
        scripted_fn = torch.jit.script(public)
        x = make_input(self.shape, torch.float32, "non_contiguous")
        for boxes in (
            torch.from_numpy(self.rois()).float(),
            as_boxes(self.rois(), "list", self.shape[0], torch.float32),
        ):
            expected = layer(x, boxes)
            torch.testing.assert_close(scripted_layer(x, boxes), expected, rtol=0, atol=0)
            torch.testing.assert_close(scripted_fn(x, boxes, **self.params), expected, rtol=0, atol=0)
        xg = x.clone().requires_grad_()
        scripted_layer(xg, boxes).sum().backward()
        xe = x.clone().requires_grad_()
        layer(xe, boxes).sum().backward()
        torch.testing.assert_close(xg.grad, xe.grad, rtol=0, atol=0)

    def test_quantized_input_is_refused_unless_the_op_is_roi_align(self):
        if self.infer_op == "roipool::roi_align":
            pytest.skip("roi_align accepts quantized input (tests/test_dropin.py)")
        x = torch.quantize_per_tensor(torch.rand(1, 8, 5, 5), 0.1, 0, torch.quint8)
        boxes = torch.quantize_per_tensor(torch.tensor([[0, 0, 0, 4, 4.0]]), 1.0, 0, torch.quint8)
        with pytest.raises(TypeError, match="only roi_align"):
            self.fn(x, boxes, **self.params)

    def test_export(self):
        layer = self.make_layer(**self.params)
        x = make_input(self.shape, torch.float32, "contiguous")
        boxes = torch.from_numpy(self.rois()).float()
        ep = torch.export.export(layer, (x, boxes), dynamic_shapes=({}, {0: torch.export.Dim.DYNAMIC}))
        targets = {str(node.target) for node in ep.graph.nodes if node.op == "call_function"}
        assert any(t.startswith("roipool.") for t in targets), targets
        other = torch.from_numpy(self.rois(k=9, seed=5)).float()
        torch.testing.assert_close(ep.module()(x, other), layer(x, other), rtol=0, atol=0)

    @pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
    def test_onnx_export_runs_in_onnxruntime(self, dynamo, tmp_path):
        if self.onnx_op_type is None:
            pytest.skip("no standard ONNX operator for this op")
        ort = pytest.importorskip("onnxruntime")
        onnx = pytest.importorskip("onnx")
        if dynamo:
            pytest.importorskip("onnxscript")
        layer = self.make_layer(**self.params)
        x = make_input(self.shape, torch.float32, "contiguous")
        boxes = torch.from_numpy(self.rois()).float()
        if dynamo:
            program = torch.onnx.export(
                layer.eval(),
                (x, boxes),
                dynamo=True,
                dynamic_shapes=({}, {0: torch.export.Dim.DYNAMIC}),
            )
            model = program.model_proto
        else:
            buffer = io.BytesIO()
            torch.onnx.export(
                layer,
                (x, boxes),
                buffer,
                dynamo=False,
                input_names=["input", "rois"],
                dynamic_axes={"rois": {0: "num_rois"}},
            )
            model = onnx.load_from_string(buffer.getvalue())
        assert self.onnx_op_type in [node.op_type for node in model.graph.node]
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        other = torch.from_numpy(self.rois(k=9, seed=6)).float()
        names = [i.name for i in session.get_inputs()]
        (got,) = session.run(None, dict(zip(names, [x.numpy(), other.numpy()])))
        # ONNX Runtime sums interpolated samples in its own order: the forward's tolerance
        torch.testing.assert_close(torch.from_numpy(got), layer(x, other), **self.forward_tolerance(torch.float32))

    @pytest.mark.parametrize("boxes_format", BOX_FORMATS)
    def test_empty_boxes(self, boxes_format):
        x = make_input(self.shape, torch.float32, "contiguous").requires_grad_()
        boxes = as_boxes(np.zeros((0, 5)), boxes_format, self.shape[0], torch.float32)
        out = self.fn(x, boxes, **self.params)
        assert out.shape[0] == 0 and out.shape[1:] == self.expected(x, self.rois()).shape[1:]
        out.sum().backward()
        assert torch.equal(x.grad, torch.zeros_like(x))

    def test_numpy_in_numpy_out(self):
        x = make_input(self.shape, torch.float32, "contiguous")
        rois = self.rois()
        got = self.fn(x.numpy(), rois, **self.params)
        assert isinstance(got, np.ndarray)
        np.testing.assert_array_equal(got, self.fn(x, torch.from_numpy(rois), **self.params).numpy())

    @pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
    def test_cuda_without_backend_says_so(self):
        x = make_input(self.shape, torch.float32, "contiguous").cuda()
        boxes = torch.from_numpy(self.rois()).float().cuda()
        try:
            import roipool.triton  # noqa: F401
        except ImportError:
            with pytest.raises(NotImplementedError, match="roipool.triton"):
                self.fn(x, boxes, **self.params)
        else:
            pytest.skip("the Triton backend is installed")

    @pytest.mark.parametrize("input, error, words", BAD_INPUTS[:3])
    def test_bad_input(self, input, error, words):
        boxes = torch.tensor([[0, 0, 0, 4, 4]], dtype=torch.float32)
        with pytest.raises(error, match=words):
            self.fn(torch.from_numpy(input), boxes, **self.params)

    def test_bad_input_dtypes_of_torch(self):
        boxes = torch.tensor([[0, 0, 0, 4, 4]], dtype=torch.float32)
        for dtype in (torch.bool, torch.int64, torch.complex64, torch.float8_e4m3fn):
            x = torch.zeros((1, 2, 5, 5)).to(dtype)
            with pytest.raises(TypeError, match="input must have a real floating dtype"):
                self.fn(x, boxes, **self.params)

    @pytest.mark.parametrize("boxes, error, words", BAD_BOXES)
    def test_bad_boxes(self, boxes, error, words):
        x = torch.zeros((2, 3, 8, 8))

        def tensor(b):
            return torch.from_numpy(b) if b.dtype.kind in "fiu" else b

        boxes = [tensor(b) for b in boxes] if isinstance(boxes, list) else tensor(boxes)
        before = [b.clone() for b in boxes] if isinstance(boxes, list) else None
        with pytest.raises(error, match=words):
            self.fn(x, boxes, **self.params)
        if before is not None:
            assert all(torch.equal(a, b) for a, b in zip(before, boxes))

    def test_bad_boxes_device_and_dtype(self):
        x = torch.zeros((1, 3, 8, 8))
        with pytest.raises(TypeError, match="boxes must hold real numbers"):
            self.fn(x, torch.zeros((1, 5), dtype=torch.bool), **self.params)
        with pytest.raises(TypeError, match=r"boxes\[0\] must hold real numbers"):
            self.fn(x, [torch.zeros((1, 4), dtype=torch.complex64)], **self.params)
        with pytest.raises(ValueError, match="boxes must be on the input's device"):
            self.fn(x, torch.zeros((1, 5), device="meta"), **self.params)
