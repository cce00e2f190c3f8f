"""Torch machinery shared by every op family: custom-op definition, argument checks, CPU bridging, ONNX registry.

Each op family lives in its own module (``_torch/roi_pool.py``, ...) and is
wired in four steps, all built from the pieces here:

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
   onnxscript translation; the exporters themselves are in ``_torch/onnx.py``.
4. **Public function.** Static checks (types, shapes, ``output_size``,
   ``spatial_scale``) from ``_checks``, boxes to rois (:func:`boxes_to_rois`),
   then the training op if a gradient is wanted (:func:`needs_grad`) and the
   inference op otherwise, so no argmax is computed when no one will use it.
   On plain CPU tensors with nothing watching the ops, the CPU kernel runs
   without the op's dispatch (:func:`eager_route`): directly, or for training
   under a plain autograd function with the op's own setup and backward
   (:func:`train_eagerly`, :class:`Training`; backward ops through
   :func:`call_backward`).

Value checks that depend on the boxes' contents (batch index, finite
coordinates) run inside the kernels (:func:`cpu_rois`, :func:`cpu_geometry`):
eager, compiled and exported calls then raise the same errors, with no graph
break, and the kernels never index out of range whichever path called them.

**Devices.** :func:`define` registers a default kernel for every device that
imports the backend module named in :data:`BACKEND_MODULES` (``roipool.triton``
for CUDA) and calls the op again; that module plugs its kernels in with
``torch.library.register_kernel("roipool::<name>", "cuda", fn)``. Without one
the call raises :class:`NotImplementedError` naming the missing backend; tensors
are never copied to the CPU behind the caller's back.
"""

from __future__ import annotations

import collections
import contextlib
import importlib
import math
import threading
import warnings
from typing import Callable, NamedTuple

import numpy as np
import torch

from .. import _checks
from ..cpu import _tiles
from ..cpu._simd import HUGE_FROM, empty_lines
from ..cpu._tiles import channels_last_copy

NAMESPACE = "roipool"

#: Device type -> module whose import registers that device's kernels.
BACKEND_MODULES = {"cuda": "roipool.triton"}

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

_ONNX_SYMBOLICS: dict[str, object] = {}
_ONNX_TRANSLATIONS: dict[str, object] = {}


def define(name: str, schema: str, *, cpu, fake, other_devices=None):
    """Create the custom op ``roipool::<name>`` with a CPU kernel and a fake kernel.

    ``schema`` is the argument list and returns, e.g. ``"(Tensor input, Tensor
    rois, float spatial_scale, int pooled_height, int pooled_width) -> Tensor"``.
    ``cpu`` runs on CPU tensors (None: no CPU kernel); ``fake`` computes only the
    outputs' shapes and dtypes (for ``torch.compile`` and ``torch.export``).
    Devices without a kernel of their own go through ``other_devices(*args)``
    when given (an op that other ops can stand in for), else through
    :func:`_other_device`. Returns the ``CustomOpDef``; its
    ``register_autograd`` and ``register_kernel`` add the rest.
    """
    qualname = f"{NAMESPACE}::{name}"

    def other_device(*args):
        return _other_device(qualname, args)

    op = torch.library.custom_op(qualname, other_devices or other_device, mutates_args=(), schema=schema)
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
    """The dtype the kernels compute in: float32 for 16-bit floats, else ``dtype`` (``_checks.compute_dtype``)."""
    return _COMPUTE_DTYPES[dtype]


# Tabled at import from the _checks rule (a dict lookup is also what torch.compile traces best).
_COMPUTE_DTYPES = {
    dtype: {4: torch.float32, 8: torch.float64}[_checks.compute_dtype(np.dtype(f"f{dtype.itemsize}")).itemsize]
    for dtype in SUPPORTED_DTYPES
}


def check_input(input, name: str = "input") -> None:
    """``input`` is a torch tensor that passes :func:`check_feature_map`."""
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"{name} must be a torch tensor, got {type(input).__name__}")
    check_feature_map(input, name)


def check_feature_map(input: torch.Tensor, name: str = "input") -> None:
    """``input`` is a ``(N, C, H, W)`` tensor of a supported floating dtype (the ``_checks`` rule)."""
    if input.is_quantized:
        raise TypeError(
            f"{name} is a quantized tensor ({input.dtype}); of roipool's ops only roi_align (and the RoIAlign "
            "layer) accepts quantized CPU tensors; dequantize it (input.dequantize()) for this op"
        )
    if input.layout is not torch.strided:
        dense_tensor(input, name)
    _checks.feature_map_dtype_and_shape(
        input.dtype in SUPPORTED_DTYPES, input.dtype, input.shape, name, "float16, bfloat16, float32, float64"
    )


def check_output_fits(input: torch.Tensor, rois: torch.Tensor, channels, pooled_size, output_size) -> None:
    """The output ``(K, channels, *pooled_size)`` of ``input``'s compute dtype, and its bin tables, fit in memory.

    ``_checks.pooled_output_fits`` on tensors; ``output_size`` is the argument
    as given, for the message. Run before any op, so a typo fails at once.
    """
    # Under torch.compile the box count may have no value while tracing (MultiScaleRoIAlign's
    # per-level counts are data-dependent): check one box's output there, which still catches
    # an impossible output_size; the allocation decides the rest at run time.
    num_rois = 1 if torch.compiler.is_compiling() else rois.shape[0]
    itemsize = compute_dtype(input.dtype).itemsize
    _checks.pooled_output_fits(num_rois, channels, *pooled_size, itemsize, output_size)


def boxes_to_rois(boxes, input: torch.Tensor, name: str = "boxes", rotated: bool = False) -> torch.Tensor:
    """``Tensor[K, 5]`` or a list of ``N`` ``Tensor[L, 4]`` -> a ``(K, 5)`` rois tensor on ``input``'s device;
    with ``rotated``, ``Tensor[K, 6]`` or a list of ``Tensor[L, 5]`` -> ``(K, 6)``.

    Shapes, dtypes and devices are checked here; the batch index and the
    coordinates' values are checked by the kernels (:func:`cpu_rois`). A list
    is assembled (differentiably) in the compute dtype, as ``_checks.rois_array``
    does; a rows tensor is passed on as given (no copy).
    """
    item_shape = _checks.rotated_box_list_item_shape if rotated else _checks.box_list_item_shape
    rows_shape = _checks.rotated_rois_shape if rotated else _checks.rois_shape
    if isinstance(boxes, (list, tuple)):
        _checks.box_list_length(len(boxes), input.shape[0], name)
        dtype = compute_dtype(input.dtype)
        parts = []
        for i, b in enumerate(boxes):
            b = _box_tensor(b, input, f"{name}[{i}]")
            item_shape(b.shape, f"{name}[{i}]")
            index = torch.full((b.shape[0], 1), i, dtype=dtype, device=input.device)
            parts.append(torch.cat([index, b.to(dtype)], dim=1))
        if not parts:
            return torch.empty((0, 6 if rotated else 5), dtype=dtype, device=input.device)
        return torch.cat(parts, dim=0)
    rois = _box_tensor(boxes, input, name)
    rows_shape(rois.shape, name)
    return rois


def dense_tensor(t: torch.Tensor, name: str) -> None:
    """``t`` is a dense tensor (``torch.strided``): the kernels read memory, not a sparse format.
    (Callers test ``t.layout is not torch.strided`` first: a call fewer on every call.)"""
    if t.layout != torch.strided:
        raise TypeError(f"{name} must be a dense tensor (layout torch.strided), got layout {t.layout}; use .to_dense()")


def _box_tensor(boxes, input: torch.Tensor, name: str) -> torch.Tensor:
    if isinstance(boxes, torch.Tensor):
        real = not (boxes.dtype.is_complex or boxes.dtype == torch.bool)
        _checks.real_numbers(real, boxes.dtype, name)
        if boxes.layout is not torch.strided:
            dense_tensor(boxes, name)
        if boxes.device != input.device:
            raise ValueError(f"{name} must be on the input's device ({input.device}), got {boxes.device}")
        return boxes
    arr = _checks.real_array(boxes, name)
    arr = np.ascontiguousarray(arr, arr.dtype.newbyteorder("="))
    return torch.from_numpy(arr).to(input.device)


def quiet_when_tracing():
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


def _watchers_active() -> bool:
    """Whether anything that sees or changes the ops a call runs is active: a dispatch or
    function mode (``FakeTensorMode``, ``torch.export``), a functorch transform (``vmap``,
    ``grad``), the profiler or TorchScript tracing. Torch releases that lack one of the
    private probes count as watched. (Not to be traced by ``torch.compile``: see
    :func:`eager_route`.)"""
    try:
        return bool(
            torch._C._len_torch_dispatch_stack()
            or torch._C._is_torch_function_mode_enabled()
            or torch._C._are_functorch_transforms_active()
            or torch.autograd._profiler_enabled()
            or torch.jit.is_tracing()
        )
    except AttributeError:
        return True


#: :func:`eager_route`'s answers: the op's CPU kernel runs directly, or under :func:`train_eagerly`.
INFERENCE, TRAINING = "inference", "training"


def eager_route(input: torch.Tensor, rois: torch.Tensor) -> str | None:
    """How an op's call may skip its custom op's dispatch: :data:`INFERENCE`, :data:`TRAINING`, or None.

    A call through ``torch.ops`` costs 60 to 150 us of Python dispatch here
    (``docs/pytorch.md``), as long as a small call's work. It is skipped only
    where nothing can tell: plain tensors (not a subclass) on the CPU and
    nothing watching (:func:`_watchers_active`). Then :data:`INFERENCE` when
    autograd wants a gradient for neither ``input`` nor ``rois`` (the CPU
    kernel runs directly), else :data:`TRAINING` (:func:`train_eagerly`,
    whose backward computes the gradients wanted, the boxes' included). The
    kernels, and so the results and gradients, are the same either way.
    """
    if torch.compiler.is_compiling():  # first: Dynamo cannot trace the probes below
        return None
    if type(input) is not torch.Tensor or type(rois) is not torch.Tensor or not (input.is_cpu and rois.is_cpu):
        return None
    route = TRAINING if torch.is_grad_enabled() and (input.requires_grad or rois.requires_grad) else INFERENCE
    return None if _watchers_active() else route


class Training(NamedTuple):
    """An op's training call as its custom op's autograd runs it: the CPU kernel, and the
    ``setup_context`` and backward functions registered with ``register_autograd``."""

    cpu: Callable
    setup: Callable
    grad: Callable


class _EagerTraining(torch.autograd.Function):
    """:func:`train_eagerly`: the op's arguments, then its :class:`Training` last (so that
    ``ctx.needs_input_grad`` lines up with the op's arguments, as its backward expects)."""

    @staticmethod
    def forward(ctx, *args):
        *inputs, training = args
        output = training.cpu(*inputs)
        ctx.eager, ctx.training = True, training
        training.setup(ctx, tuple(inputs), output)
        return output

    @staticmethod
    def backward(ctx, *grads):
        return (*ctx.training.grad(ctx, *grads), None)


def train_eagerly(training: Training, *inputs):
    """``training.cpu(*inputs)`` under a plain ``torch.autograd.Function`` that runs the op's own
    ``setup_context`` and backward: a training call without its custom op's dispatch.

    Where :func:`eager_route` allows it. A custom op's autograd goes
    through ``torch.library``'s dispatch in the forward and again in the
    backward, 110 to 140 us of Python a step on a 2-core AMD EPYC, about the
    kernels' time on a small call (``docs/pytorch.md``). The backward calls the
    backward op's kernel directly too (:func:`call_backward`). The kernels, and
    so the results and gradients, are the same.
    """
    return _EagerTraining.apply(*inputs, training)


def backward_through_op() -> bool:
    """Whether the backward of an eager training call must call its backward op rather than its
    kernel: when the backward is itself recorded (``create_graph``, for double backward), or when
    something that watches or traces the ops is active now (it may have started after the forward)."""
    return torch.is_grad_enabled() or torch.compiler.is_compiling() or _watchers_active()


def call_backward(ctx, op, kernel, *args):
    """``op(*args)``, a backward op, from an op's backward function; its CPU ``kernel`` directly in
    the backward of :func:`train_eagerly` where :func:`backward_through_op` does not forbid it."""
    if getattr(ctx, "eager", False) and not backward_through_op():
        return kernel(*args)
    return op(*args)


def save_for_adjoint(ctx, grad: torch.Tensor, rois: torch.Tensor, params) -> None:
    """The ``setup_context`` of an input-gradient op ``backward(grad, rois, ...)`` for :func:`adjoint_grads`:
    the rois and the forward's ``params``, and ``grad`` only when the rois want a second derivative."""
    ctx.save_for_backward(rois, grad if ctx.needs_input_grad[1] else None)
    ctx.params = tuple(params)


def adjoint_grads(ctx, grad_grad_input, forward, boxes_backward):
    """``(d/d grad, d/d rois)`` of ``<backward(grad, rois), grad_grad_input>`` for an input-gradient op
    linear in ``grad`` whose adjoint is the ``forward`` op (saved by :func:`save_for_adjoint`).

    ``<backward(grad, rois), v> = <grad, forward(v, rois)>``: the first is the forward at
    ``v`` (so double backward, e.g. a gradient penalty, costs one forward), the second the
    forward's box gradient at input ``v`` weighed by ``grad`` (``boxes_backward(grad, v,
    rois, ...)``). Each is computed only when wanted.
    """
    rois, grad = ctx.saved_tensors
    grad_grad = grad_rois = None
    if ctx.needs_input_grad[0]:
        grad_grad = forward(grad_grad_input, rois, *ctx.params)
    if ctx.needs_input_grad[1]:
        grad_rois = boxes_backward(grad, grad_grad_input, rois, *ctx.params)
    return grad_grad, grad_rois


def cpu_nhwc(input: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    """``input (N, C, H, W)`` as a C-contiguous ``(N, H, W, C)`` NumPy array of ``dtype``.

    A view, no copy, when ``input`` is channels-last in ``dtype``; otherwise one
    copy that also converts the dtype (``cpu._tiles.channels_last_copy``: on
    all threads for a contiguous float32 or float64 map, else NumPy's
    transposing copy, an order of magnitude faster than ``Tensor.copy_`` from
    a permuted view here).
    """
    x = of_dtype(input.detach(), dtype)  # a half-precision map widened first, its strides kept
    return channels_last_copy(x.numpy(), numpy_dtype(dtype))


def new_cpu_tensor(shape, dtype: torch.dtype, zeros: bool = False) -> torch.Tensor:
    """An uninitialised (or zeroed) CPU tensor, its data on a cache line.

    From ``cpu._simd.HUGE_FROM`` bytes its memory comes from NumPy
    (``cpu._simd.empty_lines``): NumPy asks the kernel for huge pages on large
    arrays, which halves the cost of first touching a large output (the RoI
    family's outputs and argmaxes are hundreds of MB on detection workloads),
    and roipool's memory cache keeps them between calls; torch's CPU
    allocator does neither. A smaller one is torch's own (on a 64-byte line
    too): one call instead of half a dozen, 103 against 193 us when timed
    alone after an idle spell on a 2-core AMD EPYC.
    """
    shape = tuple(int(d) for d in shape)
    if math.prod(shape) * dtype.itemsize < HUGE_FROM:
        return (torch.zeros if zeros else torch.empty)(shape, dtype=dtype)
    if dtype == torch.bfloat16:  # NumPy has no bfloat16: its bits, as uint16
        return torch.from_numpy(empty_lines(shape, np.uint16, zeros)).view(torch.bfloat16)
    return torch.from_numpy(empty_lines(shape, numpy_dtype(dtype), zeros))


def channels_last(input: torch.Tensor) -> bool:
    """Whether the map ``input (N, C, H, W)`` is in channels-last memory, so its op's output follows it.

    As torch's own CPU ops decide: channels-last-contiguous and not also
    contiguous (a map that is both, with one channel or one cell, counts as
    contiguous; its bytes are the same either way). Any other strides give a
    contiguous output.
    """
    return not input.is_contiguous() and input.is_contiguous(memory_format=torch.channels_last)


def new_cpu_output(shape, dtype: torch.dtype, channels_last: bool = False, zeros: bool = False) -> torch.Tensor:
    """:func:`new_cpu_tensor` of the 4-D ``shape (N, C, H, W)``, in channels-last memory when asked.

    Its strides are those of ``torch.empty(shape, memory_format=torch.channels_last)``
    (the fake kernels' outputs, :func:`fake_output`).
    """
    if not channels_last:
        return new_cpu_tensor(shape, dtype, zeros)
    n, c, h, w = shape
    return new_cpu_tensor((n, h, w, c), dtype, zeros).permute(0, 3, 1, 2)


def in_format(t: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """``t`` as it is, or, when ``channels_last`` and ``t`` is 4-D, in channels-last memory (one copy):
    for kernels that write NCHW only (the position-sensitive ops, the Triton kernels)."""
    return t.contiguous(memory_format=torch.channels_last) if channels_last and t.dim() == 4 else t


def fake_output(like: torch.Tensor, shape, channels_last: bool = False, dtype=None) -> torch.Tensor:
    """The fake kernels' 4-D output: ``like``'s device and dtype (or ``dtype``), contiguous or channels-last."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(shape, dtype=dtype or like.dtype, device=like.device, memory_format=memory_format)


def cpu_rois(rois: torch.Tensor, num_images: int, dtype: torch.dtype, rotated: bool = False) -> np.ndarray:
    """Validated ``(K, 5)`` rois converted to ``dtype`` (``_checks.rois_array``: batch index, finiteness);
    with ``rotated``, ``(K, 6)`` rotated rois (``_checks.rotated_rois_array``)."""
    r = rois.detach()
    if r.dtype == torch.bfloat16:  # NumPy has no bfloat16; the widening is exact
        r = r.float()
    validate = _checks.rotated_rois_array if rotated else _checks.rois_array
    return validate(r.numpy(), num_images, numpy_dtype(dtype))


def cpu_batch_index(rois: torch.Tensor, num_images: int) -> np.ndarray:
    """Column 0 of ``rois`` as int32, checked to lie in ``[0, num_images)`` (the backward's writes depend on it)."""
    batch = rois.detach()[:, 0].to(torch.int32).numpy()
    if batch.size and (batch.min() < 0 or batch.max() >= num_images):
        raise ValueError(f"rois hold batch indices outside [0, {num_images})")
    return batch


def cpu_array(t: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    """The CPU tensor ``t`` as a NumPy array of ``dtype``: a view of its memory, strides kept, when it already
    is of ``dtype`` (no ``.to`` call then: 10 to 40 us on a small call after an idle spell here)."""
    return of_dtype(t.detach(), dtype).numpy()


def of_dtype(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t.to(dtype)``, without the call when ``t`` already is of ``dtype`` (the same tensor either way).

    A large CPU tensor in contiguous or channels-last memory (a half-precision map widened for
    the kernels, their output narrowed back) is converted into :func:`new_cpu_tensor`'s memory,
    which roipool's memory cache keeps between calls: ``.to`` takes fresh pages from the OS each
    time, and faulting them in took as long as the conversion (a ``maskrcnn`` bfloat16 map's
    ``roi_align``, channels-last: 58 -> 33 ms on a 2-vCPU Intel VM, ``docs/benchmarks.md``).
    Same values and strides as ``.to``.
    """
    if t.dtype == dtype:
        return t
    if t.device.type == "cpu" and t.dim() == 4 and t.numel() * dtype.itemsize >= HUGE_FROM:
        cl = channels_last(t)
        if cl or t.is_contiguous():
            return new_cpu_output(t.shape, dtype, cl).copy_(t)
    return t.to(dtype)


def half_bits(t: torch.Tensor) -> np.ndarray | None:
    """The memory of a float16 or bfloat16 CPU tensor ``t`` (a map, or a gradient) as the bits the
    kernels read themselves (a NumPy view of the dtype ``cpu._tiles.reads_half`` gives, as
    ``cpu/_simd.HALF_BITS`` defines; strides kept), or None: another dtype, or one the kernels do
    not read on this CPU (they then compute from a float32 copy)."""
    if t.dtype not in (torch.float16, torch.bfloat16):
        return None
    bits = _tiles.reads_half("bfloat16" if t.dtype == torch.bfloat16 else "float16")
    return None if bits is None else bits_of(t.detach(), bits)


def bits_of(t: torch.Tensor, bits: np.dtype) -> np.ndarray:
    """A NumPy view of the 16-bit CPU tensor ``t``'s memory as ``bits`` (int16 or uint16), strides kept."""
    return t.view(torch.int16).numpy().view(bits)


def numpy_dtype(dtype: torch.dtype) -> np.dtype:
    """The NumPy dtype of a float16, float32, float64 or int32 torch dtype."""
    types = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64, torch.int32: np.int32}
    return np.dtype(types[dtype])


def cpu_nchw(input: torch.Tensor) -> np.ndarray:
    """``input`` as a NumPy view ``(N, C, H, W)``, any strides (bfloat16 widened to float32: NumPy has no bfloat16)."""
    x = input.detach()
    if x.dtype == torch.bfloat16:
        x = of_dtype(x, torch.float32)
    return x.numpy()


# ---- the CPU geometry of recent calls: boxes validated and converted once per training step ----

_GEOMETRY_CACHE: collections.OrderedDict = collections.OrderedDict()
_GEOMETRY_CACHE_SIZE = 16  # calls remembered: a few layers' forward and backward
_geometry_lock = threading.Lock()


def cpu_geometry(build, rois: torch.Tensor, num_images: int, dtype: torch.dtype, *params):
    """``(rois_np, build(rois_np, *params))`` for CPU ``rois``, remembered for the next call with equal arguments.

    ``rois_np`` is :func:`cpu_rois` (validated, in ``dtype``); ``build`` makes
    an op's geometry from it (bins, taps). A training step asks for the same
    geometry several times (roi_pool: to choose its backward, in the forward
    and in the backward); this validates, converts and builds once. The
    memory is keyed by the rois' bytes, not the tensor's identity, so boxes
    changed in place never get stale geometry, and errors are raised on every
    call (a failed build is not remembered).
    """
    r = rois.detach()
    if r.dtype == torch.bfloat16:
        r = r.float()
    raw = r.numpy()
    key = (build, num_images, dtype, params, raw.dtype.str, raw.shape, raw.tobytes())
    with _geometry_lock:
        hit = _GEOMETRY_CACHE.get(key)
        if hit is not None:
            _GEOMETRY_CACHE.move_to_end(key)
            return hit
    rois_np = _checks.rois_array(raw, num_images, numpy_dtype(dtype))
    value = (rois_np, build(rois_np, *params))
    with _geometry_lock:
        _GEOMETRY_CACHE[key] = value
        while len(_GEOMETRY_CACHE) > _GEOMETRY_CACHE_SIZE:
            _GEOMETRY_CACHE.popitem(last=False)
    return value


# ---- ONNX: the registry (the exporters are in _torch/onnx.py) ----


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


def dynamo_onnx_export() -> bool:
    """Whether ``torch.onnx.export(..., dynamo=True)`` is tracing this call.

    The public functions then emit the standard ONNX node themselves
    (``torch.onnx.ops.symbolic``), so that exporter needs no translation
    table. The TorchScript exporter (``dynamo=False``) traces with
    ``torch.jit`` and maps the custom ops through their registered symbolics.
    """
    ops = getattr(torch.onnx, "ops", None)
    return (
        ops is not None and hasattr(ops, "symbolic") and torch.onnx.is_in_onnx_export() and not torch.jit.is_tracing()
    )


def onnx_translation_table() -> dict:
    """``{op: onnxscript function}`` for ``torch.onnx.export(..., custom_translation_table=...)``."""
    namespace = getattr(torch.ops, NAMESPACE)
    return {getattr(namespace, name).default: make() for name, make in _ONNX_TRANSLATIONS.items()}
