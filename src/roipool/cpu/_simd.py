"""A 64-byte SIMD vector for the Numba kernels: load, store, max, transpose.

LLVM's auto-vectoriser keeps a running maximum in memory when the loop runs
over channels, and it prefers 256-bit registers on AVX-512 machines. These
intrinsics give the kernels an explicit vector value instead: one cache
line of a channels-last row (16 float32 or 8 float64 lanes) that lives in a
register while a bin's cells are scanned. LLVM lowers the vector to whatever
the CPU has (one zmm register on AVX-512, two ymm on AVX2, NEON pieces on
ARM), so the results never depend on the machine.

All loads and stores are unaligned and unchecked: callers index in range.
"""

from __future__ import annotations

import ctypes
import functools
import math
import mmap
import sys

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

from . import _pool

VECTOR_BYTES = 64
#: A transparent huge page on x86-64 and on AArch64 with 4 KiB pages.
HUGE_PAGE = 2 << 20
#: NumPy asks for huge pages (``madvise``) on arrays from 4 MiB: :func:`empty_lines` aligns those to a huge page.
HUGE_FROM = 4 << 20


class Vector(types.Type):
    """``lanes`` values of ``dtype`` held in one SIMD register (or a few)."""

    def __init__(self, dtype, lanes):
        self.dtype = dtype
        self.lanes = lanes
        super().__init__(name=f"Vector({dtype} x {lanes})")


@register_model(Vector)
class _VectorModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        element = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(element, fe_type.lanes))


#: Half-precision storage. Numba has no float16 on the CPU and NumPy no bfloat16, so a 16-bit
#: float array reaches the kernels as its bits: ``int16`` for bfloat16, ``uint16`` for float16.
#: :func:`vload`, :func:`vstore`, :func:`vzeros`, :func:`vector_lanes`, :func:`load`,
#: :func:`store` and :func:`szero` take such an array as float32 values: widened exactly on
#: load, rounded to the nearest (ties to even) on store. (No kernel holds 16-bit integers.)
HALF_BITS = {types.int16: "bfloat16", types.uint16: "float16"}


def compute_type(dtype):
    """The Numba type a kernel computes in for an array of ``dtype``: float32 for half-precision
    bits (:data:`HALF_BITS`), else ``dtype`` itself."""
    return types.float32 if dtype in HALF_BITS else dtype


def lanes_of(dtype) -> int:
    """Lanes of a 64-byte vector of ``dtype``'s compute type (a Numba scalar type): 16 for
    float32 and for half-precision bits (their loads read 32 bytes), 8 for float64."""
    return VECTOR_BYTES * 8 // compute_type(dtype).bitwidth


def _splat(value_type, value):
    """The constant ``value`` in every lane of the integer vector (or scalar) type ``value_type``."""
    if isinstance(value_type, ir.VectorType):
        return ir.Constant(value_type, [ir.Constant(value_type.element, value)] * value_type.count)
    return ir.Constant(value_type, value)


def _of_lanes(element, like):
    """``element`` as a vector of as many lanes as the LLVM type ``like`` has (or a scalar)."""
    return ir.VectorType(element, like.count) if isinstance(like, ir.VectorType) else element


def _widen(builder, bits, dtype):
    """The float32 value(s) of half-precision ``bits`` (an i16 scalar or vector) of Numba type
    ``dtype`` (:data:`HALF_BITS`); exact."""
    if HALF_BITS[dtype] == "bfloat16":  # the upper half of a float32
        wide = builder.zext(bits, _of_lanes(ir.IntType(32), bits.type))
        return builder.bitcast(builder.shl(wide, _splat(wide.type, 16)), _of_lanes(ir.FloatType(), bits.type))
    half = builder.bitcast(bits, _of_lanes(ir.HalfType(), bits.type))
    return builder.fpext(half, _of_lanes(ir.FloatType(), bits.type))  # one vcvtph2ps with F16C


def _narrow(builder, value, dtype):
    """The half-precision bits (i16) of the float32 ``value`` (scalar or vector), rounded to the
    nearest, ties to even; a NaN stays a NaN: bfloat16 keeps its sign and upper payload bits and
    sets the quiet bit, as the CPUs' own conversions (``vcvtneps2bf16``) do."""
    short = _of_lanes(ir.IntType(16), value.type)
    if HALF_BITS[dtype] == "float16":
        return builder.bitcast(builder.fptrunc(value, _of_lanes(ir.HalfType(), value.type)), short)
    bits = builder.bitcast(value, _of_lanes(ir.IntType(32), value.type))
    upper = builder.lshr(bits, _splat(bits.type, 16))
    odd = builder.and_(upper, _splat(bits.type, 1))
    rounded = builder.lshr(builder.add(builder.add(bits, _splat(bits.type, 0x7FFF)), odd), _splat(bits.type, 16))
    quiet_nan = builder.or_(upper, _splat(bits.type, 0x40))
    is_nan = builder.fcmp_unordered("uno", value, value)
    return builder.trunc(builder.select(is_nan, quiet_nan, rounded), short)


@intrinsic
def vector_lanes(typingctx, array):
    """``VECTOR_BYTES // array.itemsize`` as a constant of the compiled code.

    Numba reads ``array.itemsize`` from the array at run time, so the
    quotient would be a division at run time too, and every offset and loop
    step built from it a variable: the kernels take the lanes from here.
    """

    def codegen(context, builder, sig, args):
        return context.get_constant(types.intp, lanes_of(array.dtype))

    return types.intp(array), codegen


# A Python literal (``0``, ``False``) passed to a jitted helper makes Numba compile a
# separate copy of the helper specialised to that constant (``Literal[int](0)``), and every
# caller then links and optimises that copy too. The kernels pass these non-literal
# constants instead: one compiled copy per helper, less first-call compile time.
ZERO = np.int64(0)
ONE = np.int64(1)
FALSE = np.bool_(False)
TRUE = np.bool_(True)


def empty_lines(shape, dtype, zeros: bool = False) -> np.ndarray:
    """A new C-contiguous array, uninitialised (or zeroed), whose data starts on a 64-byte cache line.

    NumPy starts a large array 16 bytes into its first cache line (the
    allocator's header), so a kernel's 64-byte vectors over a channels-last
    cell or a bin's channels would each straddle two lines. Outputs and the
    kernels' own copies of the map are allocated here instead (the array is
    a view into a slightly longer buffer, which it keeps alive).

    An array of :data:`HUGE_FROM` bytes or more starts on a 2 MiB boundary and
    its buffer runs to the 2 MiB boundary after its end: NumPy asks the kernel
    for huge pages there, and the kernel gives one only to a whole aligned
    2 MiB range of the mapping, so an unaligned array's first and last
    partial ranges were faulted in 4 KiB pages (561 faults for a 103 MB
    output instead of 50). The slack is address space; the pages before the
    array are never touched. Such a buffer comes from the memory cache
    (``_pool.lend``): where an array the caller dropped left one that fits
    (up to a third longer), the new array reuses its memory, zeroed first
    when ``zeros``.
    """
    # plain Python on the shape: this runs for every output, and NumPy's helpers cost 10 us
    shape = tuple(int(d) for d in shape) if isinstance(shape, (tuple, list)) else (int(shape),)
    if min(shape, default=0) < 0:
        raise ValueError(f"negative dimensions are not allowed, got shape {shape}")
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes >= HUGE_FROM:  # whole huge pages, and one more to move the start onto a boundary
        align, size = HUGE_PAGE, -(-nbytes // HUGE_PAGE) * HUGE_PAGE + HUGE_PAGE
        buffer = _pool.lend(size, zeros)
    else:
        align, size = VECTOR_BYTES, nbytes + VECTOR_BYTES
        buffer = (np.zeros if zeros else np.empty)(size, np.uint8)
    start = -buffer.ctypes.data % align
    return buffer[start : start + nbytes].view(dtype).reshape(shape)


def advise_huge_pages(array: np.ndarray) -> bool:
    """Ask Linux for transparent huge pages on the whole 2 MiB ranges inside ``array``'s memory,
    before anything is written there; True if it was asked.

    For memory roipool did not allocate (XLA's output buffers): NumPy asks for
    huge pages on its own large arrays, other allocators do not, and a fresh
    100 MB output faulted in 4 KiB pages costs its kernel several times the
    writing (``docs/jax.md``). Arrays under :data:`HUGE_FROM` bytes, other
    systems, and a refusal (``THP`` off) leave everything as it was.
    """
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if array.nbytes < HUGE_FROM or advice is None or not sys.platform.startswith("linux"):
        return False
    madvise = _madvise()
    start = array.__array_interface__["data"][0]
    lo, hi = -(-start // HUGE_PAGE) * HUGE_PAGE, (start + array.nbytes) // HUGE_PAGE * HUGE_PAGE
    return madvise is not None and hi > lo and madvise(lo, hi - lo, advice) == 0


@functools.cache
def _madvise():
    """libc's ``madvise``, or None where it cannot be found."""
    try:
        function = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    function.restype = ctypes.c_int
    return function


@numba.njit(cache=True, nogil=True, inline="always")
def scratch_lines(n, like, zeros=False):
    """The kernels' :func:`empty_lines`: ``n`` values of ``like``'s dtype (uninitialised, or zeros),
    from a cache line on.

    Numba aligns its own arrays to 32 bytes only, so half of them would split
    every 64-byte vector over two lines.
    """
    pad = vector_lanes(like)
    buffer = np.empty(n + pad, like.dtype)
    start = (VECTOR_BYTES - buffer.ctypes.data % VECTOR_BYTES) % VECTOR_BYTES // like.itemsize
    lines = buffer[start : start + n]
    if zeros:
        lines[:] = 0
    return lines


def _element_pointer(context, builder, array_type, array, index, vector_type):
    data = context.make_array(array_type)(context, builder, array).data
    return builder.bitcast(builder.gep(data, [index]), context.get_value_type(vector_type).as_pointer())


@intrinsic
def borrowed(typingctx, arrays):
    """The tuple ``arrays`` without their reference counts, as Numba's ``prange`` bodies see arrays.

    A view taken of an array in a loop (``hptr[k]``) increments and decrements
    the count of the array's memory, an atomic operation on one cache line;
    when two threads slice the same array, that line moves between their cores
    at every view (the ``roi_align`` backward on ``maskrcnn``: 57 ms on two
    threads, 54 with borrowed arrays, as with ``prange``). Views of a borrowed
    array carry no count. The caller keeps the arrays alive while the results
    are used: a kernel borrows its own arguments.
    """
    if not isinstance(arrays, types.BaseTuple) or not all(isinstance(a, types.Array) for a in arrays):
        return None

    def codegen(context, builder, sig, args):
        views = []
        for ty, value in zip(sig.return_type, cgutils.unpack_tuple(builder, args[0])):
            src = context.make_array(ty)(context, builder, value)
            view = context.make_array(ty)(context, builder)
            context.populate_array(
                view, data=src.data, shape=src.shape, strides=src.strides, itemsize=src.itemsize, meminfo=None
            )
            views.append(view._getvalue())
        return context.make_tuple(builder, sig.return_type, views)

    return arrays(arrays), codegen


@intrinsic
def vload(typingctx, array, index):
    """The vector ``array[index : index + lanes]`` of a contiguous 1-D array (widened to float32
    from half-precision bits, :data:`HALF_BITS`)."""
    lanes = lanes_of(array.dtype)
    vt = Vector(compute_type(array.dtype), lanes)

    def codegen(context, builder, sig, args):
        ptr = _element_pointer(context, builder, sig.args[0], args[0], args[1], Vector(array.dtype, lanes))
        value = builder.load(ptr, align=array.dtype.bitwidth // 8)
        return _widen(builder, value, array.dtype) if array.dtype in HALF_BITS else value

    return vt(array, types.intp), codegen


@intrinsic
def vstore(typingctx, array, index, value):
    """``array[index : index + lanes] = value`` (rounded to half-precision bits, :data:`HALF_BITS`)."""
    stored = Vector(array.dtype, value.lanes)

    def codegen(context, builder, sig, args):
        ptr = _element_pointer(context, builder, sig.args[0], args[0], args[1], stored)
        bits = _narrow(builder, args[2], array.dtype) if array.dtype in HALF_BITS else args[2]
        builder.store(bits, ptr, align=array.dtype.bitwidth // 8)
        return context.get_dummy_value()

    return types.void(array, types.intp, value), codegen


def _converted(builder, value, src, dst):
    """``value``, read from an array of Numba type ``src``, as it is stored into one of ``dst``: the
    same bits where the types are the same, else widened from or rounded to half-precision bits."""
    if src == dst:
        return value
    if src in HALF_BITS:
        value = _widen(builder, value, src)
    return _narrow(builder, value, dst) if dst in HALF_BITS else value


def _movable(src, dst) -> bool:
    """Whether values move between arrays of these Numba types: the same compute type."""
    return compute_type(src.dtype) == compute_type(dst.dtype)


@intrinsic
def vmove(typingctx, src, s, dst, d):
    """``dst[d : d + lanes] = src[s : s + lanes]``: the bits as they are between arrays of one type,
    widened or rounded between half-precision bits and float32 (:data:`HALF_BITS`)."""
    if not _movable(src, dst):
        return None
    lanes = lanes_of(src.dtype)

    def codegen(context, builder, sig, args):
        ptr = _element_pointer(context, builder, sig.args[0], args[0], args[1], Vector(src.dtype, lanes))
        value = _converted(builder, builder.load(ptr, align=src.dtype.bitwidth // 8), src.dtype, dst.dtype)
        ptr = _element_pointer(context, builder, sig.args[2], args[2], args[3], Vector(dst.dtype, lanes))
        builder.store(value, ptr, align=dst.dtype.bitwidth // 8)
        return context.get_dummy_value()

    return types.void(src, types.intp, dst, types.intp), codegen


@intrinsic
def move(typingctx, src, s, dst, d):
    """``dst[d] = src[s]``, unchecked, converted as :func:`vmove` converts."""
    if not _movable(src, dst):
        return None

    def codegen(context, builder, sig, args):
        value = builder.load(builder.gep(context.make_array(sig.args[0])(context, builder, args[0]).data, [args[1]]))
        ptr = builder.gep(context.make_array(sig.args[2])(context, builder, args[2]).data, [args[3]])
        builder.store(_converted(builder, value, src.dtype, dst.dtype), ptr)
        return context.get_dummy_value()

    return types.void(src, types.intp, dst, types.intp), codegen


@intrinsic
def load(typingctx, array, index):
    """``array[index]`` of a contiguous 1-D array, unchecked, in its compute type (widened from
    half-precision bits, :data:`HALF_BITS`)."""

    def codegen(context, builder, sig, args):
        ptr = builder.gep(context.make_array(sig.args[0])(context, builder, args[0]).data, [args[1]])
        value = builder.load(ptr, align=array.dtype.bitwidth // 8)
        return _widen(builder, value, array.dtype) if array.dtype in HALF_BITS else value

    return compute_type(array.dtype)(array, types.intp), codegen


@intrinsic
def store(typingctx, array, index, value):
    """``array[index] = value``, unchecked, ``value`` of the array's compute type (rounded to
    half-precision bits as :func:`vstore` rounds, :data:`HALF_BITS`)."""

    def codegen(context, builder, sig, args):
        ptr = builder.gep(context.make_array(sig.args[0])(context, builder, args[0]).data, [args[1]])
        v = context.cast(builder, args[2], sig.args[2], compute_type(array.dtype))
        bits = _narrow(builder, v, array.dtype) if array.dtype in HALF_BITS else v
        builder.store(bits, ptr, align=array.dtype.bitwidth // 8)
        return context.get_dummy_value()

    return types.void(array, types.intp, value), codegen


@intrinsic
def szero(typingctx, like):
    """Zero in the compute type of the array ``like`` (a scalar :func:`vzeros`)."""
    zero_type = compute_type(like.dtype)

    def codegen(context, builder, sig, args):
        return context.get_constant(zero_type, 0)

    return zero_type(like), codegen


def _beats(builder, value, best):
    """Lane mask: ``value`` replaces ``best`` (strictly greater, or a NaN over a number)."""
    # "unordered or greater" is true for a NaN on either side; the second
    # test keeps a NaN already held.
    greater_or_nan = builder.fcmp_unordered(">", value, best)
    best_is_number = builder.fcmp_ordered("ord", best, best)
    return builder.and_(greater_or_nan, best_is_number)


@intrinsic
def vmax(typingctx, best, value):
    """Lane-wise running maximum: ``value`` where it beats ``best``, else ``best``.

    "Beats" is the pooling rule: strictly greater (ties keep the earlier
    value, so -0.0 seen first stays -0.0), and a NaN beats any number but
    not an earlier NaN (the first NaN is kept, payload and all).
    """

    def codegen(context, builder, sig, args):
        b, v = args
        return builder.select(_beats(builder, v, b), v, b)

    return best(best, value), codegen


def _splat_int32(builder, index, lanes):
    """``lanes`` copies of the integer ``index`` (truncated to int32)."""
    vector_type = ir.VectorType(ir.IntType(32), lanes)
    one = builder.insert_element(
        ir.Constant(vector_type, ir.Undefined), builder.trunc(index, ir.IntType(32)), ir.Constant(ir.IntType(32), 0)
    )
    return builder.shuffle_vector(one, one, ir.Constant(vector_type, None))


@intrinsic
def vmax_index(typingctx, best, best_index, value, index):
    """:func:`vmax` that also tracks where the maximum came from.

    Returns ``(best, best_index)`` after seeing ``value`` at scalar position
    ``index``; ``best_index`` is an int32 vector.
    """
    it = Vector(types.int32, best.lanes)
    ret = types.Tuple((best, it))

    def codegen(context, builder, sig, args):
        b, bi, v, i = args
        take = _beats(builder, v, b)
        splat = _splat_int32(builder, i, best.lanes)
        return context.make_tuple(builder, ret, [builder.select(take, v, b), builder.select(take, splat, bi)])

    return ret(best, best_index, value, types.intp), codegen


@intrinsic
def vsplat_index(typingctx, index, like):
    """An int32 vector with ``index`` in every lane, as many lanes as ``like``."""
    it = Vector(types.int32, like.lanes)

    def codegen(context, builder, sig, args):
        return _splat_int32(builder, args[0], like.lanes)

    return it(types.intp, like), codegen


@intrinsic
def transpose_block(typingctx, src, src_start, src_stride, dst, dst_start, dst_stride):
    """Write the transpose of a ``lanes x lanes`` block.

    Reads rows ``src[src_start + r * src_stride :][:lanes]`` and writes
    ``dst[dst_start + j * dst_stride + r] = src[src_start + r * src_stride + j]``
    for ``r, j < lanes``, as ``lanes`` vector loads, ``lanes * log2(lanes)``
    two-source shuffles and ``lanes`` vector stores. ``src`` and ``dst`` are
    contiguous 1-D arrays of one 4- or 8-byte type, or one holds half-precision
    bits and the other float32: the values are then converted as :func:`vmove` does.
    """
    if not _movable(src, dst):
        return None
    lanes = lanes_of(src.dtype)
    vt = Vector(src.dtype, lanes)

    def codegen(context, builder, sig, args):
        s, s0, ss, d, d0, ds = args
        rows = []
        for r in range(lanes):
            off = builder.add(s0, builder.mul(ss, ir.Constant(ss.type, r)))
            rows.append(
                builder.load(_element_pointer(context, builder, sig.args[0], s, off, vt), align=src.dtype.bitwidth // 8)
            )
        # Butterfly: at distance step, rows i and i + step swap the step x step
        # blocks off the diagonal; after step = 1, 2, 4, ... it is transposed.
        step = 1
        while step < lanes:
            for i in range(lanes):
                if i & step:
                    continue
                a, b = rows[i], rows[i | step]
                # lanes of the concatenation (a, b): a[j] is j, b[j] is lanes + j
                lo = [j if not (j & step) else lanes + (j ^ step) for j in range(lanes)]
                hi = [(j ^ step) if not (j & step) else lanes + j for j in range(lanes)]
                mask_lo = ir.Constant(ir.VectorType(ir.IntType(32), lanes), lo)
                mask_hi = ir.Constant(ir.VectorType(ir.IntType(32), lanes), hi)
                rows[i] = builder.shuffle_vector(a, b, mask_lo)
                rows[i | step] = builder.shuffle_vector(a, b, mask_hi)
            step *= 2
        for j in range(lanes):
            off = builder.add(d0, builder.mul(ds, ir.Constant(ds.type, j)))
            builder.store(
                _converted(builder, rows[j], src.dtype, dst.dtype),
                _element_pointer(context, builder, sig.args[3], d, off, Vector(dst.dtype, lanes)),
                align=dst.dtype.bitwidth // 8,
            )
        return context.get_dummy_value()

    return types.void(src, types.intp, types.intp, dst, types.intp, types.intp), codegen


@numba.njit(nogil=True, fastmath=False)
def transpose_tile(src, src_start, src_stride, rows, cols, dst, dst_start, dst_stride):
    """``dst[dst_start + j * dst_stride + r] = src[src_start + r * src_stride + j]`` for ``r < rows``, ``j < cols``.

    Whole ``lanes x lanes`` blocks go through registers (:func:`transpose_block`);
    the ragged edges (``rows`` or ``cols`` not a multiple of ``lanes``) are
    copied one value at a time. ``src`` and ``dst`` are contiguous 1-D arrays
    of the same 4- or 8-byte type, or half-precision bits and float32 (converted,
    :func:`vmove`).
    """
    lanes = vector_lanes(src)
    jv = cols - cols % lanes
    rv = rows - rows % lanes
    for j0 in range(0, jv, lanes):
        for r0 in range(0, rv, lanes):
            transpose_block(
                src, src_start + r0 * src_stride + j0, src_stride, dst, dst_start + j0 * dst_stride + r0, dst_stride
            )
        for j in range(j0, j0 + lanes):
            for r in range(rv, rows):
                move(src, src_start + r * src_stride + j, dst, dst_start + j * dst_stride + r)
    for j in range(jv, cols):
        for r in range(rows):
            move(src, src_start + r * src_stride + j, dst, dst_start + j * dst_stride + r)


@intrinsic
def vzeros(typingctx, like):
    """A vector of zeros of the compute type of the array ``like``."""
    vt = Vector(compute_type(like.dtype), lanes_of(like.dtype))

    def codegen(context, builder, sig, args):
        return ir.Constant(context.get_value_type(vt), None)

    return vt(like), codegen


@intrinsic
def vmuladd(typingctx, acc, weight, value):
    """``acc + weight * value`` lane by lane, ``weight`` a scalar.

    Flagged ``contract`` only: LLVM may fuse the pair into one FMA (as the
    kernels' ``fastmath={"contract"}`` allows for scalar code) but may not
    reassociate, so every lane sums in the order the caller wrote.
    """

    def codegen(context, builder, sig, args):
        a, w, v = args
        w = context.cast(builder, w, sig.args[1], acc.dtype)
        vector_type = context.get_value_type(acc)
        one = builder.insert_element(ir.Constant(vector_type, ir.Undefined), w, ir.Constant(ir.IntType(32), 0))
        splat = builder.shuffle_vector(one, one, ir.Constant(ir.VectorType(ir.IntType(32), acc.lanes), None))
        product = builder.fmul(splat, v, flags=("contract",))
        return builder.fadd(a, product, flags=("contract",))

    return acc(acc, weight, value), codegen


@intrinsic
def vmuladd_lanes(typingctx, acc, a, b):
    """``acc + a * b`` lane by lane, three vectors, flagged as :func:`vmuladd` is (fused, never
    reassociated): a dot product built from it sums each lane in the order the caller wrote,
    whatever vector instructions the CPU has."""

    def codegen(context, builder, sig, args):
        total, x, y = args
        return builder.fadd(total, builder.fmul(x, y, flags=("contract",)), flags=("contract",))

    return acc(acc, a, b), codegen


@intrinsic
def vsum(typingctx, value):
    """The sum of a vector's lanes, always in the same order: the upper half of the lanes added to
    the lower, then again, down to one lane (so the same bits on AVX2, where a 64-byte vector is
    two registers, as on AVX-512)."""

    def codegen(context, builder, sig, args):
        v = args[0]
        lanes = value.lanes
        while lanes > 1:
            half = lanes // 2
            lo = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(ir.IntType(32), half), list(range(half))))
            hi = builder.shuffle_vector(
                v, v, ir.Constant(ir.VectorType(ir.IntType(32), half), list(range(half, lanes)))
            )
            v = builder.fadd(lo, hi)
            lanes = half
        return builder.extract_element(v, ir.Constant(ir.IntType(32), 0))

    return value.dtype(value), codegen


@intrinsic
def muladd(typingctx, acc, weight, value):
    """``acc + weight * value`` on scalars, flagged as :func:`vmuladd` is, so that LLVM fuses it the
    same way: a channel summed in a scalar tail then has the bits it would have in a vector (Numba's
    own ``+=`` on an array element is not fused, even under ``fastmath={"contract"}``)."""

    def codegen(context, builder, sig, args):
        a, w, v = (context.cast(builder, arg, t, acc) for arg, t in zip(args, sig.args))
        return builder.fadd(a, builder.fmul(w, v, flags=("contract",)), flags=("contract",))

    return acc(acc, weight, value), codegen


def _prefetch_codegen(locality):
    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        ptr = builder.bitcast(builder.gep(data, [args[1]]), ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        name = "llvm.prefetch.p0" if str(ptr.type) == "ptr" else "llvm.prefetch.p0i8"  # opaque or typed pointers
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32]), name
        )
        # read (0), the locality, data cache (1)
        builder.call(fn, [ptr, ir.Constant(i32, 0), ir.Constant(i32, locality), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return codegen


@intrinsic
def prefetch(typingctx, array, index):
    """Hint that ``array[index]`` will be read soon: start loading its cache line into L1.

    A hint only (``llvm.prefetch``, highest locality: ``prefetcht0`` on x86):
    it changes no value and never faults, even past the end of the array.
    """
    return types.void(array, types.intp), _prefetch_codegen(3)


@intrinsic
def prefetch_l2(typingctx, array, index):
    """:func:`prefetch` into L2 only (low locality: ``prefetcht2`` on x86), for data read once."""
    return types.void(array, types.intp), _prefetch_codegen(1)


@intrinsic
def vadd_where(typingctx, acc, value, index, cell):
    """``acc + value`` in the lanes where the int32 vector ``index`` equals ``cell``, ``acc`` elsewhere."""

    def codegen(context, builder, sig, args):
        a, v, i, c = args
        hit = builder.icmp_signed("==", i, _splat_int32(builder, c, acc.lanes))
        return builder.select(hit, builder.fadd(a, v), a)

    return acc(acc, value, index, types.intp), codegen


@numba.njit(nogil=True)
def copy_to_lines(src, dst, start, length):
    """``dst[start : start + length] = src[:length]``, storing whole aligned 64-byte lines.

    A RoI's output rows (``PH * PW`` values each) do not start on cache
    lines, so transposing a tile straight into them would split most vector
    stores over two lines; the kernels transpose into ``src`` (in L1) and
    copy from there (into half-precision bits from float32, rounded: :func:`vmove`).
    """
    lanes = vector_lanes(dst)
    head = min(length, ((-(dst.ctypes.data + start * dst.itemsize)) % VECTOR_BYTES) // dst.itemsize)
    for i in range(head):
        move(src, i, dst, start + i)
    i = head
    while i + lanes <= length:
        vmove(src, i, dst, start + i)
        i += lanes
    for j in range(i, length):
        move(src, j, dst, start + j)
