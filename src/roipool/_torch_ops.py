"""PyTorch frontend: custom ops, autograd, device dispatch and ONNX for the RoI family.

Imported only when a torch tensor reaches a public function (or by
``roipool.nn``), so ``import roipool`` never imports torch.

How an op family is wired (``roi_pool`` below is the worked example; the
align family follows the same four steps):

1. **Custom ops.** :func:`define` creates ``roipool::<name>`` from a schema
   string, a CPU kernel and a fake (shape-only) kernel. Each family has

   - ``roipool::<op>``: the inference forward, output only;
   - ``roipool::<op>_with_<saved>`` (when the backward needs state, e.g.
     ``roi_pool_with_argmax``): the training forward, output plus what the
     backward needs;
   - ``roipool::<op>_backward``: the gradient with respect to ``input``.

   Ops take ``rois (K, 5)`` of any real dtype; the kernel converts them to the
   compute dtype (:func:`compute_dtype`) before scaling, as the NumPy path does.
2. **Autograd.** ``op.register_autograd(backward, setup_context=...)`` on the
   training forward; the backward calls the ``_backward`` op, so
   ``torch.compile`` and ``torch.export`` see only custom ops.
3. **ONNX.** :func:`register_onnx` records a TorchScript symbolic and an
   onnxscript translation (see :func:`onnx_translation_table`).
4. **Public function.** Static checks (types, shapes, ``output_size``,
   ``spatial_scale``) from ``_checks``, boxes to rois (:func:`boxes_to_rois`),
   then the training op if a gradient is wanted (:func:`needs_grad`) and the
   inference op otherwise, so no argmax is computed when no one will use it.
   (``roi_pool`` on CPU tensors usually trains through the inference op too:
   its backward, ``roi_pool_backward_recompute``, finds the maxima again; see
   :func:`_recompute_pays`.)

Value checks that depend on the boxes' contents (batch index, finite
coordinates) run inside the kernels (:func:`cpu_rois`): eager, compiled and
exported calls then raise the same errors, with no graph break, and the
kernels never index out of range whichever path called them.

**Devices.** :func:`define` registers a default kernel for every device that
imports the backend module named in :data:`BACKEND_MODULES` (``roipool.triton``
for CUDA) and calls the op again; that module plugs its kernels in with
``torch.library.register_kernel("roipool::<name>", "cuda", fn)``. Without one
the call raises :class:`NotImplementedError` naming the missing backend; tensors
are never copied to the CPU behind the caller's back.
"""

from __future__ import annotations

import contextlib
import importlib
import warnings

import numpy as np
import torch

from . import _align, _checks, _pool, _ps

NAMESPACE = "roipool"

#: Device type -> module whose import registers that device's kernels.
BACKEND_MODULES = {"cuda": "roipool.triton"}

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

_ONNX_SYMBOLICS: dict[str, object] = {}
_ONNX_TRANSLATIONS: dict[str, object] = {}


# ---- machinery shared by every op family ----


def define(name: str, schema: str, *, cpu, fake):
    """Create the custom op ``roipool::<name>`` with a CPU kernel and a fake kernel.

    ``schema`` is the argument list and returns, e.g. ``"(Tensor input, Tensor
    rois, float spatial_scale, int pooled_height, int pooled_width) -> Tensor"``.
    ``cpu`` runs on CPU tensors (None: no CPU kernel); ``fake`` computes only the
    outputs' shapes and dtypes (for ``torch.compile`` and ``torch.export``).
    Devices without a kernel of their own go through :func:`_other_device`. Returns the ``CustomOpDef``; its
    ``register_autograd`` and ``register_kernel`` add the rest.
    """
    qualname = f"{NAMESPACE}::{name}"

    def other_device(*args):
        return _other_device(qualname, args)

    op = torch.library.custom_op(qualname, other_device, mutates_args=(), schema=schema)
    if cpu is not None:
        op.register_kernel("cpu", cpu)
    op.register_fake(fake)
    return op


def _other_device(qualname: str, args):
    """Default kernel: load the device's backend module, or say clearly that there is none."""
    device = next(a.device for a in args if isinstance(a, torch.Tensor))
    key = torch._C._dispatch_key_for_device(device.type)
    module = BACKEND_MODULES.get(device.type)
    where = f"roipool has no backend for {device.type}"
    if module is not None and not torch._C._dispatch_has_kernel_for_dispatch_key(qualname, key):
        where = f"the {module} backend registers none"
        try:
            importlib.import_module(module)
        except ImportError as exc:
            where = f"the {module} backend is not available: {exc}"
    if torch._C._dispatch_has_kernel_for_dispatch_key(qualname, key):
        namespace, name = qualname.split("::")
        return getattr(getattr(torch.ops, namespace), name).default(*args)
    raise NotImplementedError(
        f"{qualname} has no kernel for {device.type} tensors ({where}); "
        f"move the tensors to the CPU explicitly (tensor.cpu()) to use the CPU kernels"
    )


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels compute in: float32 for 16-bit floats, else ``dtype`` (see ``_pool.compute_dtype``)."""
    return _COMPUTE_DTYPES[dtype]


# Tabled at import from _pool's rule (a dict lookup is also what torch.compile traces best).
_COMPUTE_DTYPES = {
    dtype: {4: torch.float32, 8: torch.float64}[_pool.compute_dtype(np.dtype(f"f{dtype.itemsize}")).itemsize]
    for dtype in SUPPORTED_DTYPES
}


def check_feature_map(input: torch.Tensor, name: str = "input") -> None:
    """``input`` is a ``(N, C, H, W)`` tensor of a supported floating dtype (the ``_checks`` rule)."""
    _checks.feature_map_dtype_and_shape(
        input.dtype in SUPPORTED_DTYPES, input.dtype, input.shape, name, "float16, bfloat16, float32, float64"
    )


def boxes_to_rois(boxes, input: torch.Tensor, name: str = "boxes") -> torch.Tensor:
    """``Tensor[K, 5]`` or a list of ``N`` ``Tensor[L, 4]`` -> a ``(K, 5)`` rois tensor on ``input``'s device.

    Shapes, dtypes and devices are checked here; the batch index and the
    coordinates' values are checked by the kernels (:func:`cpu_rois`). A list
    is assembled in the compute dtype, as ``_checks.rois_array`` does; a
    ``(K, 5)`` tensor is passed on as given (no copy).
    """
    if isinstance(boxes, (list, tuple)):
        _checks.box_list_length(len(boxes), input.shape[0], name)
        dtype = compute_dtype(input.dtype)
        parts = []
        for i, b in enumerate(boxes):
            b = _box_tensor(b, input, f"{name}[{i}]")
            _checks.box_list_item_shape(b.shape, f"{name}[{i}]")
            index = torch.full((b.shape[0], 1), i, dtype=dtype, device=input.device)
            parts.append(torch.cat([index, b.to(dtype)], dim=1))
        if not parts:
            return torch.empty((0, 5), dtype=dtype, device=input.device)
        return torch.cat(parts, dim=0)
    rois = _box_tensor(boxes, input, name)
    _checks.rois_shape(rois.shape, name)
    return rois


def _box_tensor(boxes, input: torch.Tensor, name: str) -> torch.Tensor:
    if isinstance(boxes, torch.Tensor):
        real = not (boxes.dtype.is_complex or boxes.dtype == torch.bool)
        _checks.real_numbers(real, boxes.dtype, name)
        if boxes.device != input.device:
            raise ValueError(f"{name} must be on the input's device ({input.device}), got {boxes.device}")
        return boxes
    arr = np.asarray(boxes)
    _checks.real_numbers(arr.dtype.kind in "fiu", arr.dtype, name)
    arr = np.ascontiguousarray(arr, arr.dtype.newbyteorder("="))
    return torch.from_numpy(arr).to(input.device)


def _quiet_when_tracing():
    """Silence TracerWarnings about the shape checks under ``torch.jit.trace`` (the TorchScript ONNX exporter).

    The checks read shapes, which the tracer records as tensors; they hold for
    the traced example and decide nothing in the graph, so the warning is noise.
    """
    if not torch.jit.is_tracing():
        return contextlib.nullcontext()
    return _IgnoreTracerWarnings()


class _IgnoreTracerWarnings(warnings.catch_warnings):
    def __enter__(self):
        result = super().__enter__()
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return result


def needs_grad(input: torch.Tensor) -> bool:
    """Whether autograd will want a gradient for ``input`` (then the training forward runs)."""
    return torch.is_grad_enabled() and input.requires_grad


def cpu_nhwc(input: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    """``input (N, C, H, W)`` as a C-contiguous ``(N, H, W, C)`` NumPy array of ``dtype``.

    A view, no copy, when ``input`` is channels-last in ``dtype``; otherwise one
    NumPy copy that also converts the dtype (NumPy's transposing copy is an
    order of magnitude faster than ``Tensor.copy_`` from a permuted view here).
    """
    nhwc = input.detach().permute(0, 2, 3, 1)
    if nhwc.dtype == torch.bfloat16:  # NumPy has no bfloat16; widening keeps the strides
        nhwc = nhwc.float()
    return np.ascontiguousarray(nhwc.numpy(), dtype=_numpy_dtype(dtype))


def new_cpu_tensor(shape, dtype: torch.dtype, zeros: bool = False) -> torch.Tensor:
    """An uninitialised (or zeroed) CPU tensor whose memory NumPy allocated.

    NumPy asks the kernel for huge pages on large arrays, which halves the cost
    of first touching a large output (the RoI family's outputs and argmaxes
    are hundreds of MB on detection workloads); torch's CPU allocator does not.
    """
    return torch.from_numpy((np.zeros if zeros else np.empty)(tuple(shape), _numpy_dtype(dtype)))


def cpu_rois(rois: torch.Tensor, num_images: int, dtype: torch.dtype) -> np.ndarray:
    """Validated ``(K, 5)`` rois converted to ``dtype`` (``_checks.rois_array``: batch index, finiteness)."""
    r = rois.detach()
    if r.dtype == torch.bfloat16:  # NumPy has no bfloat16; the widening is exact
        r = r.float()
    return _checks.rois_array(r.numpy(), num_images, _numpy_dtype(dtype))


def cpu_batch_index(rois: torch.Tensor, num_images: int) -> np.ndarray:
    """Column 0 of ``rois`` as int32, checked to lie in ``[0, num_images)`` (the backward's writes depend on it)."""
    batch = rois.detach()[:, 0].to(torch.int32).numpy()
    if batch.size and (batch.min() < 0 or batch.max() >= num_images):
        raise ValueError(f"rois hold batch indices outside [0, {num_images})")
    return batch


def _numpy_dtype(dtype: torch.dtype) -> np.dtype:
    return np.dtype({torch.float32: np.float32, torch.float64: np.float64, torch.int32: np.int32}[dtype])


def register_onnx(name: str, *, symbolic=None, translation=None) -> None:
    """Record ONNX exporters for ``roipool::<name>``.

    ``symbolic(g, *args)`` is a TorchScript-exporter symbolic (registered right
    away for opset >= 15, so ``torch.onnx.export(..., dynamo=False)`` needs no
    extra argument); ``translation()`` returns an onnxscript function for the
    dynamo exporter (collected by :func:`onnx_translation_table`; built lazily
    because onnxscript is an optional extra).
    """
    qualname = f"{NAMESPACE}::{name}"
    if symbolic is not None:
        _ONNX_SYMBOLICS[qualname] = symbolic
        register = getattr(torch.onnx, "register_custom_op_symbolic", None)
        if register is not None:  # absent from torch versions without the TorchScript exporter
            register(qualname, symbolic, 15)
    if translation is not None:
        _ONNX_TRANSLATIONS[name] = translation


def _dynamo_onnx_export() -> bool:
    """Whether ``torch.onnx.export(..., dynamo=True)`` is tracing this call.

    The public functions then emit the standard ONNX node themselves
    (``torch.onnx.ops.symbolic``), so that exporter needs no translation
    table. The TorchScript exporter (``dynamo=False``) traces with
    ``torch.jit`` and maps the custom ops through their registered symbolics.
    """
    ops = getattr(torch.onnx, "ops", None)
    return ops is not None and hasattr(ops, "symbolic") and torch.onnx.is_in_onnx_export() and not torch.jit.is_tracing()


def _onnx_max_roi_pool(input, rois, spatial_scale, pooled_h, pooled_w):
    """The ONNX ``MaxRoiPool`` node of :func:`roi_pool`, for the dynamo exporter."""
    return torch.onnx.ops.symbolic(
        "MaxRoiPool",
        (input, rois.to(input.dtype)),
        {"pooled_shape": [pooled_h, pooled_w], "spatial_scale": float(spatial_scale)},
        dtype=input.dtype,
        shape=(rois.shape[0], input.shape[1], pooled_h, pooled_w),
    )


def _onnx_roi_align(input, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned):
    """The ONNX ``RoiAlign`` node of :func:`roi_align`, for the dynamo exporter."""
    return torch.onnx.ops.symbolic(
        "RoiAlign",
        (input, rois[:, 1:].to(input.dtype), rois[:, 0].to(torch.int64)),
        {
            "output_height": pooled_h,
            "output_width": pooled_w,
            "spatial_scale": float(spatial_scale),
            "sampling_ratio": max(sampling_ratio, 0),
            "mode": "avg",
            "coordinate_transformation_mode": "half_pixel" if aligned else "output_half_pixel",
        },
        dtype=input.dtype,
        shape=(rois.shape[0], input.shape[1], pooled_h, pooled_w),
    )


def onnx_translation_table() -> dict:
    """``{op: onnxscript function}`` for ``torch.onnx.export(..., custom_translation_table=...)``."""
    namespace = getattr(torch.ops, NAMESPACE)
    return {getattr(namespace, name).default: make() for name, make in _ONNX_TRANSLATIONS.items()}


# ---- roi_pool ----

_ROI_POOL_ARGS = "Tensor input, Tensor rois, float spatial_scale, int pooled_height, int pooled_width"


class _CpuRoIPool:
    """One CPU call: the input as NumPy (channels-last, or NCHW where the caller allows) and the bins, in the compute dtype."""

    def __init__(self, input, rois, spatial_scale, pooled_height, pooled_width, nchw_ok=False):
        n, self.channels, height, width = input.shape
        self.input_dtype = input.dtype
        self.dtype = compute_dtype(input.dtype)
        # nchw_ok: the caller also takes an NCHW-contiguous map (channels_last False)
        self.channels_last = not (nchw_ok and input.dtype == self.dtype and input.is_contiguous())
        self.x = cpu_nhwc(input, self.dtype) if self.channels_last else input.detach().numpy()
        rois_np = cpu_rois(rois, n, self.dtype)
        self.bins = _pool.Bins(rois_np, spatial_scale, pooled_height, pooled_width, height, width)
        self.flat_shape = (rois_np.shape[0], self.channels, pooled_height * pooled_width)
        self.shape = (rois_np.shape[0], self.channels, pooled_height, pooled_width)

    def result(self, flat: torch.Tensor) -> torch.Tensor:
        return flat.view(self.shape).to(self.input_dtype)


def _roi_pool_cpu(input, rois, spatial_scale, pooled_height, pooled_width):
    call = _CpuRoIPool(input, rois, spatial_scale, pooled_height, pooled_width)
    out = new_cpu_tensor(call.flat_shape, call.dtype)
    _pool.launch_forward(call.x, call.bins, out.numpy())
    return call.result(out)


def _roi_pool_fake(input, rois, spatial_scale, pooled_height, pooled_width):
    return input.new_empty((rois.shape[0], input.shape[1], pooled_height, pooled_width))


def _roi_pool_with_argmax_cpu(input, rois, spatial_scale, pooled_height, pooled_width):
    call = _CpuRoIPool(input, rois, spatial_scale, pooled_height, pooled_width)
    out = new_cpu_tensor(call.flat_shape, call.dtype)
    argmax = new_cpu_tensor(call.flat_shape, torch.int32)
    _pool.launch_forward_argmax(call.x, call.bins, out.numpy(), argmax.numpy())
    return call.result(out), argmax.view(call.shape)


def _roi_pool_with_argmax_fake(input, rois, spatial_scale, pooled_height, pooled_width):
    shape = (rois.shape[0], input.shape[1], pooled_height, pooled_width)
    return input.new_empty(shape), input.new_empty(shape, dtype=torch.int32)


def _roi_pool_backward_cpu(grad, argmax, rois, batch_size, channels, height, width):
    dtype = compute_dtype(grad.dtype)
    flat = (grad.shape[0], channels, grad.shape[2] * grad.shape[3])
    grad_out = grad.detach().to(dtype).contiguous().numpy().reshape(flat)
    argmax_np = argmax.detach().to(torch.int32).contiguous().numpy().reshape(flat)
    if argmax_np.size and _pool._argmax_outside(argmax_np, height * width):
        # an index past the map would be a write out of bounds in the kernel
        raise ValueError(f"argmax holds indices outside [-1, H * W = {height * width})")
    batch = cpu_batch_index(rois, batch_size)
    grad_in = new_cpu_tensor((batch_size, channels, height * width), dtype, zeros=True)
    _pool.launch_backward(grad_out, argmax_np, batch, grad_in.numpy())
    return grad_in.view(batch_size, channels, height, width).to(grad.dtype)


def _roi_pool_backward_fake(grad, argmax, rois, batch_size, channels, height, width):
    return grad.new_empty((batch_size, channels, height, width))


roi_pool_op = define("roi_pool", f"({_ROI_POOL_ARGS}) -> Tensor", cpu=_roi_pool_cpu, fake=_roi_pool_fake)
roi_pool_with_argmax_op = define(
    "roi_pool_with_argmax",
    f"({_ROI_POOL_ARGS}) -> (Tensor, Tensor)",
    cpu=_roi_pool_with_argmax_cpu,
    fake=_roi_pool_with_argmax_fake,
)
roi_pool_backward_op = define(
    "roi_pool_backward",
    "(Tensor grad, Tensor argmax, Tensor rois, int batch_size, int channels, int height, int width) -> Tensor",
    cpu=_roi_pool_backward_cpu,
    fake=_roi_pool_backward_fake,
)


def _roi_pool_backward_recompute_cpu(grad, input, rois, spatial_scale, pooled_height, pooled_width):
    if grad.dtype != input.dtype:
        raise TypeError(f"grad must have the input's dtype {input.dtype}, got {grad.dtype}")
    call = _CpuRoIPool(input, rois, spatial_scale, pooled_height, pooled_width, nchw_ok=True)
    if tuple(grad.shape) != call.shape:
        raise ValueError(f"grad must have shape {call.shape} for these rois and input, got {tuple(grad.shape)}")
    grad_out = grad.detach().to(call.dtype).contiguous().numpy().reshape(call.flat_shape)
    n, channels, height, width = input.shape
    grad_in = new_cpu_tensor((n, channels, height * width), call.dtype)
    _pool.launch_backward_recompute(call.x, call.channels_last, call.bins, grad_out, grad_in.numpy())
    return grad_in.view(n, channels, height, width).to(grad.dtype)


def _roi_pool_backward_recompute_fake(grad, input, rois, spatial_scale, pooled_height, pooled_width):
    return input.new_empty(input.shape)


def _roi_pool_backward_recompute_any_device(grad, input, rois, spatial_scale, pooled_height, pooled_width):
    # Devices without a fused kernel (CUDA: the Triton backend) run the two
    # ops it fuses; what they compute is the same.
    _, argmax = torch.ops.roipool.roi_pool_with_argmax(input, rois, spatial_scale, pooled_height, pooled_width)
    return torch.ops.roipool.roi_pool_backward(grad, argmax, rois, *input.shape)


# The gradient of roi_pool from the input instead of an argmax: on the CPU one
# fused kernel re-scans each bin and adds the gradient at its maximum, which
# saves writing and reading back an argmax as large as the output.
roi_pool_backward_recompute_op = torch.library.custom_op(
    f"{NAMESPACE}::roi_pool_backward_recompute",
    _roi_pool_backward_recompute_any_device,
    mutates_args=(),
    schema=f"(Tensor grad, {_ROI_POOL_ARGS}) -> Tensor",
)
roi_pool_backward_recompute_op.register_kernel("cpu", _roi_pool_backward_recompute_cpu)
roi_pool_backward_recompute_op.register_fake(_roi_pool_backward_recompute_fake)


def _roi_pool_backward_recompute_setup(ctx, inputs, output):
    _, input, rois, *ctx.params = inputs
    ctx.save_for_backward(input, rois)


def _roi_pool_backward_recompute_grad(ctx, grad_grad_input):
    # Linear in grad: its adjoint reads grad_grad_input at each bin's maximum
    # (0 for empty bins). The maxima move only where the input has ties, so
    # the derivative with respect to the input is zero.
    input, rois = ctx.saved_tensors
    _, argmax = torch.ops.roipool.roi_pool_with_argmax(input, rois, *ctx.params)
    _, channels, height, width = input.shape
    plane = rois[:, 0].to(torch.int64).view(-1, 1, 1, 1) * channels + torch.arange(
        channels, device=input.device
    ).view(1, -1, 1, 1)
    index = plane * (height * width) + argmax.clamp(min=0).to(torch.int64)
    picked = grad_grad_input.reshape(-1)[index.reshape(-1)].view(argmax.shape)
    grad_grad = torch.where(argmax >= 0, picked, torch.zeros_like(picked))
    return grad_grad, None, None, None, None, None


roi_pool_backward_recompute_op.register_autograd(
    _roi_pool_backward_recompute_grad, setup_context=_roi_pool_backward_recompute_setup
)


def _roi_pool_with_argmax_setup(ctx, inputs, output):
    input, rois = inputs[:2]
    ctx.save_for_backward(rois, output[1])
    ctx.input_shape = tuple(input.shape)
    # The argmax output never gets a gradient; without this autograd would
    # hand the backward a zero tensor as large as the output (about 45 ms of
    # a 80 ms backward on the vgg16 workload).
    ctx.set_materialize_grads(False)


def _roi_pool_with_argmax_grad(ctx, grad_output, _grad_argmax):
    if grad_output is None:  # the pooled output did not reach the loss
        return None, None, None, None, None
    rois, argmax = ctx.saved_tensors
    grad_input = torch.ops.roipool.roi_pool_backward(grad_output, argmax, rois, *ctx.input_shape)
    return grad_input, None, None, None, None


def _roi_pool_setup(ctx, inputs, output):
    input, rois, *ctx.params = inputs
    ctx.save_for_backward(input, rois)


def _roi_pool_grad(ctx, grad_output):
    # The training forward on the CPU (see roi_pool()): the backward finds
    # the maxima again from the saved input instead of reading an argmax.
    input, rois = ctx.saved_tensors
    grad_input = torch.ops.roipool.roi_pool_backward_recompute(grad_output, input, rois, *ctx.params)
    return grad_input, None, None, None, None


roi_pool_with_argmax_op.register_autograd(_roi_pool_with_argmax_grad, setup_context=_roi_pool_with_argmax_setup)
roi_pool_op.register_autograd(_roi_pool_grad, setup_context=_roi_pool_setup)


def _roi_pool_symbolic(g, input, rois, spatial_scale, pooled_height, pooled_width):
    from torch.onnx.symbolic_helper import _get_const

    scale = _get_const(spatial_scale, "f", "spatial_scale")
    ph = _get_const(pooled_height, "i", "pooled_height")
    pw = _get_const(pooled_width, "i", "pooled_width")
    if rois.type().scalarType() != input.type().scalarType():
        rois = g.op("CastLike", rois, input)
    return g.op("MaxRoiPool", input, rois, pooled_shape_i=[ph, pw], spatial_scale_f=scale)


def _roi_pool_with_argmax_symbolic(g, *args):
    # ONNX's MaxRoiPool has no argmax output; only the pooled values are exported.
    return _roi_pool_symbolic(g, *args), None


def _roi_pool_translation():
    from onnxscript import opset18 as op

    def roi_pool(input, rois, spatial_scale: float, pooled_height: int, pooled_width: int):
        return op.MaxRoiPool(
            input, op.CastLike(rois, input), pooled_shape=[pooled_height, pooled_width], spatial_scale=spatial_scale
        )

    return roi_pool


def _roi_pool_with_argmax_translation():
    from onnx import TensorProto, helper
    from onnxscript import opset18 as op

    minus_one = helper.make_tensor("minus_one", TensorProto.INT32, [1], [-1])

    def roi_pool_with_argmax(input, rois, spatial_scale: float, pooled_height: int, pooled_width: int):
        output = op.MaxRoiPool(
            input, op.CastLike(rois, input), pooled_shape=[pooled_height, pooled_width], spatial_scale=spatial_scale
        )
        # MaxRoiPool has no argmax output and an exported model never runs the
        # backward, so nothing reads this placeholder and the exporter drops it.
        return output, op.ConstantOfShape(op.Shape(output), value=minus_one)

    return roi_pool_with_argmax


register_onnx("roi_pool", symbolic=_roi_pool_symbolic, translation=_roi_pool_translation)
register_onnx(
    "roi_pool_with_argmax", symbolic=_roi_pool_with_argmax_symbolic, translation=_roi_pool_with_argmax_translation
)


def roi_pool(input, boxes, output_size, spatial_scale=1.0):
    """Tensor RoI max pooling; see :func:`roipool.roi_pool`.

    Args:
        input (Tensor[N, C, H, W]): float16, bfloat16, float32 or float64; any
            strides (channels-last is read in place).
        boxes (Tensor[K, 5] or List[Tensor[L, 4]]): on ``input``'s device.
        output_size (int or (int, int)): ``(pooled_h, pooled_w)``.
        spatial_scale (float): image-to-feature-map factor.

    Returns:
        Tensor[K, C, pooled_h, pooled_w] of ``input``'s dtype, differentiable
        with respect to ``input``.
    """
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"input must be a NumPy array or a torch tensor, got {type(input).__name__}")
    with _quiet_when_tracing():
        check_feature_map(input)
        pooled_h, pooled_w = _checks.output_size_pair(output_size)
        scale = _checks.positive_scale(spatial_scale)
        rois = boxes_to_rois(boxes, input)
    if _dynamo_onnx_export():
        return _onnx_max_roi_pool(input, rois, scale, pooled_h, pooled_w)
    if needs_grad(input) and not _recompute_pays(input, rois, scale, pooled_h, pooled_w):
        return torch.ops.roipool.roi_pool_with_argmax(input, rois, scale, pooled_h, pooled_w)[0]
    # The training forward is the inference op too: its backward finds the
    # maxima again from the input (roi_pool_backward_recompute).
    return torch.ops.roipool.roi_pool(input, rois, scale, pooled_h, pooled_w)


#: Mean cells per bin above which a CPU training forward stores the argmax
#: instead of letting the backward scan every bin again (measured in kernels.md).
RECOMPUTE_MAX_CELLS_PER_BIN = 24.0


def _recompute_pays(input, rois, scale, pooled_h, pooled_w) -> bool:
    """Whether roi_pool's backward should re-scan the bins rather than read a stored argmax.

    On CUDA never (the Triton backend reads an argmax). On the CPU when the
    bins are small: the re-scan costs about twice the forward's scan, the
    argmax 8 bytes per output written and read. While tracing
    (``torch.compile``, ``torch.export``) the boxes are not known and the
    re-scan is chosen. The result is the same either way.
    """
    if input.device.type != "cpu":
        return False
    known = type(input) is torch.Tensor and type(rois) is torch.Tensor
    if not known or torch.compiler.is_compiling() or torch.jit.is_tracing():
        return True
    n, _, height, width = input.shape
    rois_np = cpu_rois(rois, n, compute_dtype(input.dtype))
    return _pool.cells_per_bin(rois_np, scale, pooled_h, pooled_w, height, width) <= RECOMPUTE_MAX_CELLS_PER_BIN


# ---- ps_roi_pool, ps_roi_align (position-sensitive, R-FCN) ----
#
# Both ops are linear in the input, so the backward needs only the boxes: one
# forward op (no training variant) whose autograd calls the backward op, and a
# backward op whose own gradient is the forward again (double backward).


def _cpu_nchw(input: torch.Tensor) -> np.ndarray:
    """``input`` as a NumPy view ``(N, C, H, W)`` (bfloat16 widened); ``_ps`` makes the one bin-major copy."""
    x = input.detach()
    if x.dtype == torch.bfloat16:
        x = x.float()
    return x.numpy()


def _ps_forward_cpu(op, input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio):
    dtype = compute_dtype(input.dtype)
    _checks.ps_channels(input.shape[1], (pooled_height, pooled_width))
    rois_np = cpu_rois(rois, input.shape[0], dtype)
    out = _ps.run_forward(
        op, _cpu_nchw(input), rois_np, (pooled_height, pooled_width), spatial_scale, sampling_ratio
    )
    return torch.from_numpy(out).to(input.dtype)


def _ps_backward_cpu(op, grad, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, shape):
    dtype = compute_dtype(grad.dtype)
    channels_out = _checks.ps_channels(shape[1], (pooled_height, pooled_width))
    rois_np = cpu_rois(rois, shape[0], dtype)
    expected = (rois_np.shape[0], channels_out, pooled_height, pooled_width)
    if tuple(grad.shape) != expected:
        raise ValueError(f"grad must have shape {expected} for these rois and input shape {shape}, got {tuple(grad.shape)}")
    g = grad.detach()
    if g.dtype == torch.bfloat16:
        g = g.float()
    grad_in = _ps.run_backward(
        op, g.numpy(), rois_np, shape, (pooled_height, pooled_width), spatial_scale, sampling_ratio
    )
    return torch.from_numpy(grad_in).to(grad.dtype)


def _ps_forward_fake(input, rois, spatial_scale, pooled_height, pooled_width, *sampling_ratio):
    channels_out = input.shape[1] // (pooled_height * pooled_width)
    return input.new_empty((rois.shape[0], channels_out, pooled_height, pooled_width))


def _ps_backward_fake(grad, rois, spatial_scale, pooled_height, pooled_width, *rest):
    batch_size, channels, height, width = rest[-4:]
    return grad.new_empty((batch_size, channels, height, width))


def _ps_roi_pool_cpu(input, rois, spatial_scale, pooled_height, pooled_width):
    return _ps_forward_cpu("pool", input, rois, spatial_scale, pooled_height, pooled_width, 0)


def _ps_roi_pool_backward_cpu(grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels, height, width):
    shape = (batch_size, channels, height, width)
    return _ps_backward_cpu("pool", grad, rois, spatial_scale, pooled_height, pooled_width, 0, shape)


def _ps_roi_align_cpu(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio):
    return _ps_forward_cpu("align", input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio)


def _ps_roi_align_backward_cpu(
    grad, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, batch_size, channels, height, width
):
    shape = (batch_size, channels, height, width)
    return _ps_backward_cpu("align", grad, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, shape)


_PS_ARGS = "Tensor rois, float spatial_scale, int pooled_height, int pooled_width"
_PS_SHAPE = "int batch_size, int channels, int height, int width"

ps_roi_pool_op = define(
    "ps_roi_pool", f"(Tensor input, {_PS_ARGS}) -> Tensor", cpu=_ps_roi_pool_cpu, fake=_ps_forward_fake
)
ps_roi_pool_backward_op = define(
    "ps_roi_pool_backward",
    f"(Tensor grad, {_PS_ARGS}, {_PS_SHAPE}) -> Tensor",
    cpu=_ps_roi_pool_backward_cpu,
    fake=_ps_backward_fake,
)
ps_roi_align_op = define(
    "ps_roi_align",
    f"(Tensor input, {_PS_ARGS}, int sampling_ratio) -> Tensor",
    cpu=_ps_roi_align_cpu,
    fake=_ps_forward_fake,
)
ps_roi_align_backward_op = define(
    "ps_roi_align_backward",
    f"(Tensor grad, {_PS_ARGS}, int sampling_ratio, {_PS_SHAPE}) -> Tensor",
    cpu=_ps_roi_align_backward_cpu,
    fake=_ps_backward_fake,
)


def _ps_forward_setup(ctx, inputs, output):
    input, rois, *ctx.params = inputs  # spatial_scale, pooled sizes (, sampling_ratio)
    ctx.save_for_backward(rois)
    ctx.input_shape = tuple(input.shape)


def _ps_backward_setup(ctx, inputs, output):
    _, rois, *params = inputs
    ctx.save_for_backward(rois)
    ctx.params = params[:-4]
    ctx.num_args = len(inputs)


def _ps_roi_pool_grad(ctx, grad_output):
    (rois,) = ctx.saved_tensors
    grad_input = torch.ops.roipool.ps_roi_pool_backward(grad_output, rois, *ctx.params, *ctx.input_shape)
    return grad_input, None, None, None, None


def _ps_roi_align_grad(ctx, grad_output):
    (rois,) = ctx.saved_tensors
    grad_input = torch.ops.roipool.ps_roi_align_backward(grad_output, rois, *ctx.params, *ctx.input_shape)
    return grad_input, None, None, None, None, None


def _ps_roi_pool_backward_grad(ctx, grad_grad_input):
    # the backward is linear in grad with the forward as its adjoint
    (rois,) = ctx.saved_tensors
    return (torch.ops.roipool.ps_roi_pool(grad_grad_input, rois, *ctx.params),) + (None,) * (ctx.num_args - 1)


def _ps_roi_align_backward_grad(ctx, grad_grad_input):
    (rois,) = ctx.saved_tensors
    return (torch.ops.roipool.ps_roi_align(grad_grad_input, rois, *ctx.params),) + (None,) * (ctx.num_args - 1)


ps_roi_pool_op.register_autograd(_ps_roi_pool_grad, setup_context=_ps_forward_setup)
ps_roi_align_op.register_autograd(_ps_roi_align_grad, setup_context=_ps_forward_setup)
ps_roi_pool_backward_op.register_autograd(_ps_roi_pool_backward_grad, setup_context=_ps_backward_setup)
ps_roi_align_backward_op.register_autograd(_ps_roi_align_backward_grad, setup_context=_ps_backward_setup)


def _ps_public(input, boxes, output_size, spatial_scale):
    """Static checks shared by the two public functions; returns ``(rois, scale, pooled_h, pooled_w)``."""
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"input must be a NumPy array or a torch tensor, got {type(input).__name__}")
    with _quiet_when_tracing():
        check_feature_map(input)
        pooled_h, pooled_w = _checks.output_size_pair(output_size)
        scale = _checks.positive_scale(spatial_scale)
        _checks.ps_channels(input.shape[1], (pooled_h, pooled_w))
        rois = boxes_to_rois(boxes, input)
    return rois, scale, pooled_h, pooled_w


def ps_roi_pool(input, boxes, output_size, spatial_scale=1.0):
    """Tensor position-sensitive RoI average pooling; see :func:`roipool.ps_roi_pool`.

    Args:
        input (Tensor[N, C, H, W]): float16, bfloat16, float32 or float64, ``C``
            a multiple of ``pooled_h * pooled_w``; any strides.
        boxes (Tensor[K, 5] or List[Tensor[L, 4]]): on ``input``'s device.
        output_size (int or (int, int)): ``(pooled_h, pooled_w)``.
        spatial_scale (float): image-to-feature-map factor.

    Returns:
        Tensor[K, C / (pooled_h * pooled_w), pooled_h, pooled_w] of ``input``'s
        dtype, differentiable with respect to ``input``.
    """
    rois, scale, pooled_h, pooled_w = _ps_public(input, boxes, output_size, spatial_scale)
    return torch.ops.roipool.ps_roi_pool(input, rois, scale, pooled_h, pooled_w)


def ps_roi_align(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1):
    """Tensor position-sensitive RoIAlign; see :func:`roipool.ps_roi_align`.

    Arguments and result as :func:`ps_roi_pool`, plus ``sampling_ratio``
    (samples per bin side; ``<= 0`` adaptive, at least one).
    """
    rois, scale, pooled_h, pooled_w = _ps_public(input, boxes, output_size, spatial_scale)
    ratio = _checks.sampling_ratio_int(sampling_ratio)
    return torch.ops.roipool.ps_roi_align(input, rois, scale, pooled_h, pooled_w, ratio)


# ---- roi_align ----

_ROI_ALIGN_PARAMS = "float spatial_scale, int pooled_height, int pooled_width, int sampling_ratio, bool aligned"


def _roi_align_cpu(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned):
    n, channels, height, width = input.shape
    dtype = compute_dtype(input.dtype)
    x = input.detach().to(dtype).numpy()  # no copy in the compute dtype; the kernel reads any strides
    rois_np = cpu_rois(rois, n, dtype)
    taps = _align.Taps(rois_np, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, height, width)
    out = new_cpu_tensor((rois_np.shape[0], channels, pooled_height * pooled_width), dtype)
    _align.launch_forward(x, taps, out.numpy())
    return out.view(rois_np.shape[0], channels, pooled_height, pooled_width).to(input.dtype)


def _roi_align_fake(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned):
    return input.new_empty((rois.shape[0], input.shape[1], pooled_height, pooled_width))


def _roi_align_backward_cpu(
    grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels, height, width, sampling_ratio, aligned
):
    dtype = compute_dtype(grad.dtype)
    k = grad.shape[0]
    grad_out = grad.detach().to(dtype).contiguous().numpy().reshape(k, channels, pooled_height * pooled_width)
    rois_np = cpu_rois(rois, batch_size, dtype)
    taps = _align.Taps(rois_np, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned, height, width)
    grad_in = new_cpu_tensor((batch_size, channels, height, width), dtype)
    _align.launch_backward(grad_out, taps, grad_in.numpy())
    return grad_in.to(grad.dtype)


def _roi_align_backward_fake(
    grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels, height, width, sampling_ratio, aligned
):
    return grad.new_empty((batch_size, channels, height, width))


# One op serves training and inference: the backward needs only the boxes and
# the input's shape, so the forward keeps no extra state.
roi_align_op = define(
    "roi_align", f"(Tensor input, Tensor rois, {_ROI_ALIGN_PARAMS}) -> Tensor", cpu=_roi_align_cpu, fake=_roi_align_fake
)
roi_align_backward_op = define(
    "roi_align_backward",
    "(Tensor grad, Tensor rois, float spatial_scale, int pooled_height, int pooled_width, "
    "int batch_size, int channels, int height, int width, int sampling_ratio, bool aligned) -> Tensor",
    cpu=_roi_align_backward_cpu,
    fake=_roi_align_backward_fake,
)


def _roi_align_setup(ctx, inputs, output):
    input, rois, *ctx.params = inputs
    ctx.save_for_backward(rois)
    ctx.input_shape = tuple(input.shape)


def _roi_align_grad(ctx, grad_output):
    (rois,) = ctx.saved_tensors
    spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned = ctx.params
    grad_input = torch.ops.roipool.roi_align_backward(
        grad_output, rois, spatial_scale, pooled_height, pooled_width, *ctx.input_shape, sampling_ratio, aligned
    )
    return grad_input, None, None, None, None, None, None


def _roi_align_backward_setup(ctx, inputs, output):
    _, rois, spatial_scale, pooled_height, pooled_width, *_, sampling_ratio, aligned = inputs
    ctx.params = (spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned)
    ctx.save_for_backward(rois)


def _roi_align_backward_grad(ctx, grad_grad_input):
    # The backward is linear in ``grad`` and its adjoint is the forward itself,
    # so double backward (e.g. gradient penalties) costs one forward.
    (rois,) = ctx.saved_tensors
    grad_grad = torch.ops.roipool.roi_align(grad_grad_input, rois, *ctx.params)
    return (grad_grad,) + (None,) * 10


roi_align_op.register_autograd(_roi_align_grad, setup_context=_roi_align_setup)
roi_align_backward_op.register_autograd(_roi_align_backward_grad, setup_context=_roi_align_backward_setup)


def _roi_align_symbolic(g, input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned):
    from torch.onnx import symbolic_helper

    scale = symbolic_helper._get_const(spatial_scale, "f", "spatial_scale")
    ph = symbolic_helper._get_const(pooled_height, "i", "pooled_height")
    pw = symbolic_helper._get_const(pooled_width, "i", "pooled_width")
    ratio = symbolic_helper._get_const(sampling_ratio, "i", "sampling_ratio")
    aligned = bool(symbolic_helper._get_const(aligned, "b", "aligned"))
    batch = g.op("Gather", rois, g.op("Constant", value_t=torch.tensor(0, dtype=torch.int64)), axis_i=1)
    batch = g.op("Cast", batch, to_i=7)  # INT64
    boxes = g.op("Gather", rois, g.op("Constant", value_t=torch.tensor([1, 2, 3, 4], dtype=torch.int64)), axis_i=1)
    boxes = g.op("CastLike", boxes, input)
    attrs = dict(output_height_i=ph, output_width_i=pw, spatial_scale_f=scale, sampling_ratio_i=max(ratio, 0), mode_s="avg")
    opset = symbolic_helper.GLOBALS.export_onnx_opset_version
    if opset >= 16:
        attrs["coordinate_transformation_mode_s"] = "half_pixel" if aligned else "output_half_pixel"
    elif aligned:
        # Before opset 16 RoiAlign knows only the legacy rule. Shifting the boxes
        # by half a cell would still differ on boxes under one cell (the legacy
        # rule stretches them), so refuse rather than export a different op.
        raise ValueError(f"roi_align with aligned=True needs ONNX opset 16 or later to export exactly, got opset {opset}")
    return g.op("RoiAlign", input, boxes, batch, **attrs)


def _roi_align_translation():
    from onnxscript import opset18 as op

    def roi_align(
        input, rois, spatial_scale: float, pooled_height: int, pooled_width: int, sampling_ratio: int, aligned: bool
    ):
        batch = op.Cast(op.Gather(rois, op.Constant(value_int=0), axis=1), to=7)  # INT64
        boxes = op.CastLike(op.Gather(rois, op.Constant(value_ints=[1, 2, 3, 4]), axis=1), input)
        mode = "half_pixel" if aligned else "output_half_pixel"
        return op.RoiAlign(
            input,
            boxes,
            batch,
            output_height=pooled_height,
            output_width=pooled_width,
            spatial_scale=spatial_scale,
            sampling_ratio=sampling_ratio if sampling_ratio > 0 else 0,
            mode="avg",
            coordinate_transformation_mode=mode,
        )

    return roi_align


register_onnx("roi_align", symbolic=_roi_align_symbolic, translation=_roi_align_translation)


def roi_align(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    """Tensor RoIAlign; see :func:`roipool.roi_align`.

    Args:
        input (Tensor[N, C, H, W]): float16, bfloat16, float32 or float64; any
            strides (channels-last is read in place).
        boxes (Tensor[K, 5] or List[Tensor[L, 4]]): on ``input``'s device.
        output_size (int or (int, int)): ``(pooled_h, pooled_w)``.
        spatial_scale (float): image-to-feature-map factor.
        sampling_ratio (int): samples per bin side; ``<= 0`` is adaptive.
        aligned (bool): half-cell pixel model (``True``) or the legacy rule.

    Returns:
        Tensor[K, C, pooled_h, pooled_w] of ``input``'s dtype, differentiable
        with respect to ``input`` (twice: the backward is differentiable too).
    """
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"input must be a NumPy array or a torch tensor, got {type(input).__name__}")
    with _quiet_when_tracing():
        check_feature_map(input)
        pooled_h, pooled_w, scale, ratio, aligned = _align.arguments(output_size, spatial_scale, sampling_ratio, aligned)
        rois = boxes_to_rois(boxes, input)
    if _dynamo_onnx_export():
        return _onnx_roi_align(input, rois, scale, pooled_h, pooled_w, ratio, aligned)
    return torch.ops.roipool.roi_align(input, rois, scale, pooled_h, pooled_w, ratio, aligned)
