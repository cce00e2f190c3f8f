"""Argument validation shared by every op and every backend.

Each check raises ``TypeError`` (wrong kind of thing) or ``ValueError`` (right
kind, bad value) with a message that names the argument. Checks never modify
the caller's arrays: anything normalised is a new array.

The scalar checks try a plain ``int``, ``float`` or ``bool`` first: the
``numbers`` ABCs' ``isinstance`` took 30 of the 43 us that checking
``roi_align``'s four arguments took after an idle spell (AMD EPYC), and a
small call makes a dozen such checks.
"""

from __future__ import annotations

import math
import numbers
import operator
import os
from typing import Sequence

import numpy as np

_FLOAT_KINDS = ("f",)


def output_size_pair(output_size, name: str = "output_size") -> tuple[int, int]:
    """``int`` or ``(pooled_h, pooled_w)`` -> ``(pooled_h, pooled_w)``, both positive."""
    if type(output_size) is int and output_size > 0:  # the common case, without the ABC checks
        return output_size, output_size
    if isinstance(output_size, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int or a pair of ints, got bool {output_size!r}")
    if isinstance(output_size, numbers.Integral):
        pair = (output_size, output_size)
    elif isinstance(output_size, np.ndarray) and output_size.ndim == 0:  # np.array(7): one value, as an int
        pair = (output_size.item(), output_size.item())
    elif isinstance(output_size, (Sequence, np.ndarray)) and not isinstance(output_size, (str, bytes)):
        pair = tuple(output_size)
        if len(pair) != 2:
            raise ValueError(f"{name} must be an int or a pair (pooled_h, pooled_w), got {len(pair)} values")
    else:
        raise TypeError(f"{name} must be an int or a pair of ints, got {type(output_size).__name__}")
    # a 0-d integer array inside the pair is an int too, as it is alone (and as NumPy indexing takes it)
    pair = tuple(v.item() if isinstance(v, np.ndarray) and v.ndim == 0 and v.dtype.kind in "iu" else v for v in pair)
    for v in pair:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{name} must hold ints, got {v!r} of type {type(v).__name__}")
        if v <= 0:
            raise ValueError(f"{name} must be positive, got {tuple(int(p) for p in pair)}")
    return int(pair[0]), int(pair[1])


def positive_scale(spatial_scale, name: str = "spatial_scale") -> float:
    """A finite, positive real number."""
    if type(spatial_scale) is float and 0.0 < spatial_scale < math.inf:  # the common case, as below
        return spatial_scale
    if isinstance(spatial_scale, (bool, np.bool_)) or not isinstance(spatial_scale, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(spatial_scale).__name__}")
    try:
        value = float(spatial_scale)
    except OverflowError:  # an int such as 10**400
        value = math.inf
    # comparisons, not math.isfinite: torch.compile traces them with no graph break (NaN fails both)
    if not (0.0 < value < math.inf):
        raise ValueError(f"{name} must be finite and positive, got {spatial_scale!r}")
    return value


#: Samples per bin side a positive ``sampling_ratio`` may ask for. RoIAlign and the
#: position-sensitive RoIAlign (and their gradients) visit up to this many per bin and axis,
#: about 5 ms a bin here at the limit; far beyond it a call of a few boxes ran for minutes.
MAX_SAMPLING_RATIO = 2**20
#: The same for rotated RoIAlign, which visits the square of its ratio per bin.
MAX_ROTATED_SAMPLING_RATIO = 2**10


def sampling_ratio_int(sampling_ratio, name: str = "sampling_ratio", limit: int = MAX_SAMPLING_RATIO) -> int:
    """An int from ``-2**31`` (a C int, as in torchvision) to ``limit``; ``<= 0`` means adaptive."""
    if type(sampling_ratio) is int and -(2**31) <= sampling_ratio <= limit:  # the common case, as below
        return sampling_ratio
    if isinstance(sampling_ratio, (bool, np.bool_)) or not isinstance(sampling_ratio, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(sampling_ratio).__name__}")
    if sampling_ratio > limit:
        raise ValueError(f"{name} must be at most {limit} samples per bin side, got {sampling_ratio} (<= 0: adaptive)")
    if sampling_ratio < -(2**31):
        raise ValueError(f"{name} must be at least -2**31 (any value <= 0 samples adaptively), got {sampling_ratio}")
    return int(sampling_ratio)


def geometry_limits(pooled_h: int, pooled_w: int, sampling_ratio: int = 0, limit: int = MAX_SAMPLING_RATIO) -> None:
    """The public errors of :func:`output_size_pair` and :func:`sampling_ratio_int`, for the CPU
    geometry: a direct ``torch.ops.roipool.*`` call reaches it without the public checks (a
    ``pooled_h`` of 0 divided by zero, a huge ratio ran for minutes). Two comparisons when all is well."""
    if pooled_h <= 0 or pooled_w <= 0:
        output_size_pair((pooled_h, pooled_w))
    if not -(2**31) <= sampling_ratio <= limit:
        sampling_ratio_int(sampling_ratio, limit=limit)


def flag(value, name: str) -> bool:
    """A bool (Python or NumPy); anything else is a TypeError, so that a
    misplaced positional argument (say a sampling ratio) is not read as truth."""
    if type(value) is bool:
        return value
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return bool(value)


def compute_dtype(dtype) -> np.dtype:
    """The dtype every kernel computes in: float32 for 16-bit floats, else ``dtype`` (native byte order).

    The one rule for all ops and backends (the torch and Triton frontends table
    it from here). For max pooling the conversion is exact both ways and the
    maximum is one of the inputs; the averaging ops round once, at the end.
    """
    try:
        return _COMPUTE_DTYPES[dtype]  # 8 us after an idle spell, against 19 for NumPy's dtype calls
    except (KeyError, TypeError):  # not seen yet, or not hashable
        pass
    given, dtype = dtype, np.dtype(dtype)
    result = np.dtype(np.float32) if dtype.itemsize < 4 else dtype.newbyteorder("=")
    if dtype.kind == "f":  # a handful of keys at most
        _COMPUTE_DTYPES[given] = result
    return result


_COMPUTE_DTYPES: dict = {}


def feature_map(input, name: str = "input", accepted: str = "a NumPy array or a torch tensor") -> np.ndarray:
    """A real floating NumPy array of shape ``(N, C, H, W)``; returned as given (not copied).

    ``accepted`` names what the calling function takes, for the message: the
    public functions that dispatch on the array type take either; the
    NumPy-only ones (``roi_pool_with_argmax``, the backwards) say
    ``"a NumPy array"``.
    """
    if not isinstance(input, np.ndarray):
        raise TypeError(f"{name} must be {accepted}, got {type(input).__name__}")
    feature_map_dtype_and_shape(is_kernel_float(input.dtype), input.dtype, input.shape, name)
    return input


def is_kernel_float(dtype: np.dtype) -> bool:
    """float16, float32 or float64 (any byte order): the types the kernels compute in or from;
    a long double (float128) is refused rather than rounded to float64."""
    return dtype.kind == "f" and dtype.itemsize <= 8


def feature_map_dtype_and_shape(
    is_real_floating: bool, dtype, shape, name: str = "input", supported: str = "float16, float32, float64"
) -> None:
    """The feature-map rule on an array's properties, for any array library.

    ``is_real_floating`` says whether ``dtype`` (named in the message) is one of
    the ``supported`` real floating types; ``shape`` must have 4 dimensions
    ``(N, C, H, W)``.
    """
    if not is_real_floating:
        raise TypeError(f"{name} must have a real floating dtype ({supported}), got {dtype}")
    if len(shape) != 4:
        raise ValueError(f"{name} must have 4 dimensions (N, C, H, W), got shape {tuple(shape)}")


LAYOUTS = ("nchw", "nhwc")


def layout_is_nhwc(layout) -> bool:
    """Whether the NumPy ``layout`` argument asks for channels-last arrays: ``"nchw"`` (default) or ``"nhwc"``."""
    if not isinstance(layout, str) or layout.lower() not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(repr(v) for v in LAYOUTS)}, got {layout!r}")
    return layout.lower() == "nhwc"


def rois_array(boxes, num_images: int, dtype: np.dtype, name: str = "boxes") -> np.ndarray:
    """Boxes as a new C-contiguous ``(K, 5)`` array of ``dtype``, native byte order.

    ``boxes`` is a ``(K, 5)`` array of ``[batch_index, x1, y1, x2, y2]`` rows or a
    list of ``num_images`` arrays ``(L_i, 4)`` of ``[x1, y1, x2, y2]``.
    Batch indices must be whole numbers in ``[0, num_images)`` and coordinates
    finite (after the conversion: a value that overflows ``dtype`` is refused).
    The first bad row is reported.
    """
    if isinstance(boxes, (list, tuple)):
        # assembled in a new array of the output's dtype: checked in place
        rows = out = _assemble_rois(boxes, num_images, dtype, name, 4, box_list_item_shape, rois_shape)
    else:
        rows = real_array(boxes, name)
        rois_shape(rows.shape, name)
        out = np.empty(rows.shape, np.dtype(dtype).newbyteorder("="))
    compiled = _compiled()
    k, problem = compiled.rois_rows(_compiled_operand(rows), num_images, out)
    if problem == compiled.BATCH_NOT_WHOLE:
        raise ValueError(f"{name}[{k}, 0] is the batch index and must be a whole number, got {rows[k, 0].item()!r}")
    if problem == compiled.BATCH_OUT_OF_RANGE:
        raise ValueError(
            f"{name}[{k}, 0] is the batch index and must be in [0, {num_images}), got {rows[k, 0].item()!r}"
        )
    if problem == compiled.COORD_NOT_FINITE:  # the row as given: out is filled only up to the bad value
        raise ValueError(
            f"{name}: box {k} has a coordinate that is NaN or infinite (or overflows {out.dtype}): {rows[k, 1:]}"
        )
    return out


def _compiled():
    """The module ``_rows`` (Numba), imported on the first call that needs it."""
    global _ROWS
    if _ROWS is None:
        from . import _rows

        _ROWS = _rows
    return _ROWS


_ROWS = None


def _compiled_operand(a: np.ndarray) -> np.ndarray:
    """``a`` as the checks' compiled code takes it: C-contiguous, writeable (Numba compiles
    read-only arrays apart), float32 or float64 in native byte order; a copy only where needed,
    other dtypes to float64, which holds every valid batch index exactly."""
    if a.dtype in _COMPILED_DTYPES and a.flags.c_contiguous and a.flags.writeable:
        return a
    native = a.dtype.newbyteorder("=")
    return np.array(a, native if native in _COMPILED_DTYPES else np.float64)


_COMPILED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _assemble_rois(boxes, num_images: int, dtype, name: str, columns: int, item_shape, rows_shape) -> np.ndarray:
    """A new C-contiguous ``(K, 1 + columns)`` array of ``dtype`` from rows with a batch index, or
    from one ``(L_i, columns)`` array per image; ``item_shape``/``rows_shape`` check those shapes.

    Checks the batch index column; values that overflow ``dtype`` become inf for the caller to report.
    """
    dtype = np.dtype(dtype).newbyteorder("=")
    if isinstance(boxes, (list, tuple)):
        box_list_length(len(boxes), num_images, name)
        arrays = []
        for i, b in enumerate(boxes):
            arrays.append(real_array(b, f"{name}[{i}]"))
            item_shape(arrays[-1].shape, f"{name}[{i}]")
        out = np.empty((sum(a.shape[0] for a in arrays), columns + 1), dtype)
        start = 0
        for i, arr in enumerate(arrays):  # each image's rows written once, in place
            rows = out[start : start + arr.shape[0]]
            rows[:, 0] = i
            with np.errstate(over="ignore"):
                rows[:, 1:] = arr
            start += arr.shape[0]
        return out
    arr = real_array(boxes, name)
    rows_shape(arr.shape, name)
    _batch_index_column(arr[:, 0], num_images, name)
    with np.errstate(over="ignore"):
        return np.array(arr, dtype=dtype, order="C", copy=True)


def scaled_boxes_finite(rois: np.ndarray, scale, offset=0.0, name: str = "boxes") -> None:
    """Scaled corners ``rois[:, 1:5] * scale - offset`` and their extents must be finite in ``rois``' dtype.

    Only boxes beyond about 1e38 / spatial_scale (float32) fail; the kernels
    would otherwise sample at infinite or NaN positions. (Bin sizes, extents
    divided by a positive output size, are then finite too.)
    """
    t = rois.dtype.type
    overflowing_box(rois, _compiled().first_overflowing_box(_compiled_operand(rois), t(scale), t(offset)), scale, name)


def overflowing_box(rois: np.ndarray, k: int, scale, name: str = "boxes") -> None:
    """:func:`scaled_boxes_finite`'s error for box ``k`` of ``rois``, found by a caller; nothing when ``k < 0``."""
    if k >= 0:
        raise ValueError(
            f"{name}: box {k} {rois[k, 1:]} times spatial_scale {scale} overflows {rois.dtype} "
            "(corners or extent not finite)"
        )


def box_list_length(length: int, num_images: int, name: str = "boxes") -> None:
    """Boxes given per image: one array for each of the ``num_images`` images."""
    if length != num_images:
        raise ValueError(f"{name} as a list must hold one array per image: got {length} arrays for {num_images} images")


def box_list_item_shape(shape, name: str) -> None:
    """One image's boxes: shape ``(L, 4)`` of ``[x1, y1, x2, y2]``."""
    if len(shape) != 2 or shape[1] != 4:
        raise ValueError(f"{name} must have shape (L, 4) of [x1, y1, x2, y2], got {tuple(shape)}")


def rois_shape(shape, name: str = "boxes") -> None:
    """Boxes with their batch index: shape ``(K, 5)`` of ``[batch_index, x1, y1, x2, y2]``."""
    if len(shape) != 2 or shape[1] != 5:
        raise ValueError(
            f"{name} must have shape (K, 5) of [batch_index, x1, y1, x2, y2] "
            f"or be a list of (L, 4) arrays, got shape {tuple(shape)}"
        )


def real_numbers(is_real: bool, dtype, name: str) -> None:
    """Boxes hold real numbers (integers or floating point, not bool or complex)."""
    if not is_real:
        raise TypeError(f"{name} must hold real numbers, got dtype {dtype}")


def real_array(value, name: str) -> np.ndarray:
    """``value`` as a NumPy array of real numbers (not copied when it is one), else an error naming ``name``."""
    try:
        arr = np.asarray(value)
    except ValueError:  # ragged nested lists: NumPy's message names no argument
        raise ValueError(f"{name} must be an array of numbers; its rows have different lengths") from None
    real_numbers(arr.dtype.kind in "fiu", arr.dtype, name)
    return arr


# ---- position-sensitive pooling (ps_roi_pool, ps_roi_align) ----


def ps_channels(channels: int, output_size: tuple[int, int]) -> int:
    """Output channels ``C / (pooled_h * pooled_w)``; ValueError unless ``C`` is a multiple."""
    pooled_h, pooled_w = output_size
    geometry_limits(pooled_h, pooled_w)
    bins = pooled_h * pooled_w
    if channels % bins:
        raise ValueError(
            f"input has {channels} channels, which is not a multiple of pooled_h * pooled_w = "
            f"{pooled_h} * {pooled_w} = {bins} from output_size={output_size}: position-sensitive "
            f"pooling reads one input channel per output channel and bin"
        )
    return channels // bins


def scale_in_dtype(spatial_scale: float, dtype, name: str = "spatial_scale"):
    """``spatial_scale`` (a float already checked positive and finite) as a scalar of ``dtype``,
    where it must be a normal number: one that overflows there, or lies below the smallest
    normal number (a subnormal scale would be flushed to 0 by runtimes that flush
    subnormals, XLA's on the CPU among them), is a ``ValueError``."""
    t = dtype.type if isinstance(dtype, np.dtype) else np.dtype(dtype).type
    # the common case, nothing to round away: two comparisons (a dtype lookup took 20 us after an idle spell)
    if t is np.float32 and _FLOAT32_NORMAL[0] <= spatial_scale <= _FLOAT32_NORMAL[1]:
        return t(spatial_scale)
    if t is np.float64 and _FLOAT64_NORMAL[0] <= spatial_scale <= _FLOAT64_NORMAL[1]:
        return t(spatial_scale)
    dtype = np.dtype(dtype)
    lo, hi = float(np.finfo(dtype).tiny), float(np.finfo(dtype).max)
    with np.errstate(over="ignore", under="ignore"):  # judged just below
        value = dtype.type(spatial_scale)  # 3.4028235e38, as float32's largest prints, rounds to it
    if not lo <= value <= hi:
        raise ValueError(
            f"{name}={spatial_scale!r} is not representable in {dtype} as a normal number (from {lo:.8g} to {hi:.8g})"
        )
    return value


_FLOAT32_NORMAL = (float(np.finfo(np.float32).tiny), float(np.finfo(np.float32).max))
_FLOAT64_NORMAL = (float(np.finfo(np.float64).tiny), float(np.finfo(np.float64).max))


def grad_output_array(grad_output, name: str = "grad_output") -> np.ndarray:
    """The gradient of a NumPy backward: a real floating NumPy array ``(K, C, pooled_h, pooled_w)``, not copied."""
    if not isinstance(grad_output, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array, got {type(grad_output).__name__}")
    if not is_kernel_float(grad_output.dtype):
        raise TypeError(f"{name} must have a real floating dtype (float16, float32, float64), got {grad_output.dtype}")
    if grad_output.ndim != 4:
        raise ValueError(f"{name} must have shape (K, C, pooled_h, pooled_w), got {grad_output.shape}")
    return grad_output


def grad_output_shape(shape, expected, why: str, name: str = "grad_output") -> None:
    """``grad_output``'s shape must be ``expected``, the forward's output shape; ``why`` says what fixed it."""
    if tuple(shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)} for {why}, got {tuple(shape)}")


def roi_align_arguments(output_size, spatial_scale, sampling_ratio, aligned):
    """Checked ``(pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned)`` of ``roi_align``."""
    pooled_h, pooled_w = output_size_pair(output_size)
    scale = positive_scale(spatial_scale)
    return pooled_h, pooled_w, scale, sampling_ratio_int(sampling_ratio), flag(aligned, "aligned")


def physical_memory() -> int | None:
    """Physical memory of this machine in bytes, or None where the platform does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows) or no such name
        return None


#: Read once at import (2**48 where unknown): a plain number is also what ``torch.compile`` traces through.
MEMORY_BYTES = physical_memory() or 2**48


def fits_in_memory(shape, itemsize: int, name: str, asked, what: str = "the output") -> None:
    """ValueError naming ``name`` (and the value ``asked``) when an array of ``shape`` cannot fit in memory.

    Run before any work, so that a typo such as ``output_size=(1, 10**9)``
    fails at once instead of after minutes of building tables for an array
    that cannot be allocated. ``shape`` may hold the tables' sizes as well
    (``what`` names them). Dimensions that are not plain ints (symbolic sizes
    while ``torch.compile`` traces) are not checked.
    """
    if any(type(d) is not int for d in shape):
        return
    needed = math.prod(shape) * itemsize
    limit = MEMORY_BYTES
    if needed > limit:
        raise ValueError(
            f"{name}={asked!r} asks for {what} of shape {tuple(shape)}, {needed / 2**30:.3g} GiB, "
            f"more than this machine's memory ({limit / 2**30:.3g} GiB)"
        )


def pooled_output_fits(num_rois: int, channels: int, pooled_h: int, pooled_w: int, itemsize: int, output_size) -> None:
    """The RoI family's output ``(K, C, pooled_h, pooled_w)`` and per-RoI bin tables must fit in memory.

    The bin tables hold about 16 bytes per RoI and bin row or column; they are
    built before the output is allocated, so both are checked here first.
    """
    if type(num_rois) is int and type(channels) is int and type(pooled_h) is int and type(pooled_w) is int:
        # plain ints that fit pass at once (the general check took 30 us after an idle spell)
        output = num_rois * channels * pooled_h * pooled_w * itemsize
        if output <= MEMORY_BYTES and num_rois * (pooled_h + pooled_w) * 16 <= MEMORY_BYTES:
            return
    fits_in_memory((num_rois, channels, pooled_h, pooled_w), itemsize, "output_size", output_size)
    fits_in_memory((num_rois, pooled_h + pooled_w, 16), 1, "output_size", output_size, "bin tables")


def input_shape_tuple(input_shape, name: str = "input_shape", dims: str = "N, C, H, W") -> tuple[int, int, int, int]:
    """Four non-negative ints (``dims`` names them in the message: ``"N, H, W, C"`` for channels-last)."""
    try:
        if isinstance(input_shape, (str, bytes, set, frozenset, dict)):  # not an ordered run of sizes
            raise TypeError
        shape = tuple(_int_size(s) for s in input_shape)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of 4 ints ({dims}), got {input_shape!r}") from None
    if len(shape) != 4 or min(shape) < 0:
        raise ValueError(f"{name} must be ({dims}) of non-negative ints, got {input_shape!r}")
    fits_in_memory(shape, 4, name, input_shape, "a gradient")
    return shape


def _int_size(value) -> int:
    """An int (Python, NumPy, or a 0-d integer array; not a bool, float or str), else a TypeError."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError
    return operator.index(value)


# ---- feature pyramids (roipool.nn.MultiScaleRoIAlign, roipool.jax.multi_scale_roi_align) ----


def pyramid_level(level, name: str = "canonical_level") -> int:
    """A pyramid level: an int (not a bool) with ``|level| <= 1024`` (``2**1024`` overflows a float)."""
    if isinstance(level, (bool, np.bool_)) or not isinstance(level, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {level!r}")
    if abs(level) > 1024:
        raise ValueError(f"{name} must be a pyramid level (|level| <= 1024), got {level}")
    return int(level)


def image_shapes_list(image_shapes) -> None:
    """``image_shapes``: a non-empty list (or tuple) of ``(height, width)`` pairs of positive whole
    sizes (:func:`image_side`), else a ``ValueError`` naming it. Only the tallest is read, as in
    torchvision."""
    if not isinstance(image_shapes, (list, tuple)) or len(image_shapes) == 0:
        raise ValueError(f"image_shapes must be a list of the images' (height, width), got {image_shapes!r}")
    for shape in image_shapes:
        if len(getattr(shape, "shape", ())) > 1 or not hasattr(shape, "__len__") or len(shape) != 2:
            raise ValueError(f"image_shapes must hold (height, width) pairs, got {shape!r}")
        for side in shape:
            if not image_side(side):
                raise ValueError(f"image_shapes must hold (height, width) pairs of positive sizes, got {shape!r}")


def image_side(side) -> bool:
    """A positive size in pixels, as torchvision's ``int()`` reads it: an int (a symbolic one
    under ``torch.compile``), a whole float, or a 0-d array or tensor holding one."""
    if isinstance(side, (bool, np.bool_)):
        return False
    if isinstance(side, numbers.Integral):
        return 0 < side <= 2**31
    try:
        value = float(side)
    except (TypeError, ValueError, RuntimeError):  # not a number, or a tensor of several
        return False
    return 0 < value <= 2**31 and value == math.floor(value)


# ---- rotated boxes (roi_align_rotated) ----

#: Adaptive sampling of a rotated box takes ``ceil(size / pooled)`` samples per
#: bin side; beyond this many the call is refused instead of running for hours.
MAX_ADAPTIVE_GRID = 2**20


def rotated_rois_array(boxes, num_images: int, dtype: np.dtype, name: str = "boxes") -> np.ndarray:
    """Rotated boxes as a new C-contiguous ``(K, 6)`` array of ``dtype``, native byte order.

    ``boxes`` is a ``(K, 6)`` array of ``[batch_index, cx, cy, w, h, angle]``
    rows or a list of ``num_images`` arrays ``(L_i, 5)`` of ``[cx, cy, w, h,
    angle]``. Batch indices must be whole numbers in ``[0, num_images)``,
    centres, sizes and angles finite, and sizes ``w, h >= 0``.
    """
    rois = _assemble_rois(boxes, num_images, dtype, name, 5, rotated_box_list_item_shape, rotated_rois_shape)
    rotated_box_values(rois, name)
    return rois


def _batch_index_column(batch, num_images: int, name: str) -> None:
    if ((batch >= 0) & (batch < num_images) & (batch == np.floor(batch))).all():  # NaN fails each test
        return
    if batch.dtype.kind == "f":
        bad = ~np.isfinite(batch) | (batch != np.floor(batch))
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{name}[{k}, 0] is the batch index and must be a whole number, got {batch[k].item()!r}")
    bad = (batch < 0) | (batch >= num_images)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name}[{k}, 0] is the batch index and must be in [0, {num_images}), got {batch[k].item()!r}")


def rotated_box_values(rois: np.ndarray, name: str = "boxes") -> None:
    """``(K, 6)`` rotated rois: finite centre, size and angle, and no negative size."""
    values = rois[:, 1:]
    finite = np.isfinite(values).all(axis=1)
    if not finite.all():
        k = int(np.flatnonzero(~finite)[0])
        raise ValueError(
            f"{name}: box {k} [cx, cy, w, h, angle] = {values[k]} has a value that is NaN or infinite "
            f"(or overflows {rois.dtype})"
        )
    negative = (values[:, 2:4] < 0).any(axis=1)
    if negative.any():
        k = int(np.flatnonzero(negative)[0])
        raise ValueError(
            f"{name}: box {k} has a negative size w = {values[k, 2]!r}, h = {values[k, 3]!r}; "
            "rotated boxes are [cx, cy, w, h, angle] with w, h >= 0 (a flip is an angle of pi)"
        )


def rotated_rois_shape(shape, name: str = "boxes") -> None:
    """Rotated boxes with their batch index: shape ``(K, 6)`` of ``[batch_index, cx, cy, w, h, angle]``."""
    if len(shape) != 2 or shape[1] != 6:
        hint = ""
        if len(shape) == 2 and shape[1] == 5:
            hint = (
                " (5 columns given: rotated boxes need the batch index AND the angle; a (K, 5) array "
                "is either [cx, cy, w, h, angle] without the batch index or an axis-aligned box)"
            )
        raise ValueError(
            f"{name} must have shape (K, 6) of [batch_index, cx, cy, w, h, angle] "
            f"or be a list of (L, 5) arrays, got shape {tuple(shape)}{hint}"
        )


def rotated_box_list_item_shape(shape, name: str) -> None:
    """One image's rotated boxes: shape ``(L, 5)`` of ``[cx, cy, w, h, angle]``."""
    if len(shape) != 2 or shape[1] != 5:
        hint = " (4 columns given: the angle is missing)" if len(shape) == 2 and shape[1] == 4 else ""
        raise ValueError(f"{name} must have shape (L, 5) of [cx, cy, w, h, angle], got {tuple(shape)}{hint}")


def rotated_scaled_boxes(rois: np.ndarray, scale, pooled_h: int, pooled_w: int, adaptive: bool, name: str = "boxes"):
    """Scaled centres and sizes stay finite in the compute dtype, and an adaptive grid stays bounded."""
    t = rois.dtype.type
    with np.errstate(over="ignore", invalid="ignore"):
        scaled = rois[:, 1:5] * t(scale)
    ok = np.isfinite(scaled).all(axis=1)
    if not ok.all():
        k = int(np.flatnonzero(~ok)[0])
        raise ValueError(f"{name}: box {k} {rois[k, 1:]} times spatial_scale {scale} overflows {rois.dtype}")
    if adaptive and rois.shape[0]:
        grid = np.maximum(scaled[:, 3] / pooled_h, scaled[:, 2] / pooled_w)
        k = int(np.argmax(grid))
        if grid[k] > MAX_ADAPTIVE_GRID:
            raise ValueError(
                f"{name}: box {k} {rois[k, 1:]} would take {float(np.ceil(grid[k])):.3g} adaptive samples per bin "
                f"side (more than {MAX_ADAPTIVE_GRID}); pass a positive sampling_ratio for boxes this large"
            )


# ---- prroi_pool (Precise RoI Pooling) ----


def prroi_arguments(output_size, spatial_scale) -> tuple[int, int, float]:
    """Checked ``(pooled_h, pooled_w, spatial_scale)`` of ``prroi_pool``."""
    pooled_h, pooled_w = output_size_pair(output_size)
    return pooled_h, pooled_w, positive_scale(spatial_scale)


def prroi_grad_output(grad_output, expected, why: str, name: str = "grad_output") -> np.ndarray:
    """A real floating NumPy array of the forward output's shape ``expected`` (not copied); ``why`` says what fixed it."""
    if not isinstance(grad_output, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array, got {type(grad_output).__name__}")
    if not is_kernel_float(grad_output.dtype):
        raise TypeError(f"{name} must have a real floating dtype (float16, float32, float64), got {grad_output.dtype}")
    if grad_output.shape != tuple(expected):
        raise ValueError(
            f"{name} must have shape {tuple(expected)} (K, C, pooled_h, pooled_w) for {why}, got {grad_output.shape}"
        )
    return grad_output
