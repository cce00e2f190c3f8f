"""Half-precision maps read and written by the kernels themselves (``cpu/_simd.HALF_BITS``).

A float16 or bfloat16 map goes to ``roi_align``'s kernels (forward and backward) and ``roi_pool``'s
forwards in 16 bits, each cell widened as it is read and each result rounded once as it is
stored. The result must have the bits of the float32 route it replaces: widen the map, compute
in float32, round the output (to nearest, ties to even), for every path through the kernels; and
the conversions themselves must be those of torch and NumPy for every value but NaN payloads.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import roipool  # noqa: E402
from roipool.cpu import _tiles  # noqa: E402
from roipool.cpu import roi_align as kernels  # noqa: E402
from roipool.cpu._simd import load, store, vector_lanes, vload, vstore  # noqa: E402

HALVES = [torch.bfloat16, torch.float16]
BITS = {torch.bfloat16: np.int16, torch.float16: np.uint16}


def _needs_hardware_float16(dtype):
    if _tiles.reads_half(str(dtype).removeprefix("torch.")) is None:
        pytest.skip("float16 is widened outside the kernels on this CPU (no F16C)")


@numba.njit
def _through_vectors(src, dst):
    """``dst`` <- ``src`` through the vector loads and stores (whole vectors), the rest one by one
    (scalar loads and stores): half-precision bits to float32 or back."""
    lanes = vector_lanes(src)
    i = 0
    while i + lanes <= src.size:
        vstore(dst, i, vload(src, i))
        i += lanes
    for j in range(i, src.size):
        store(dst, j, load(src, j))


def _float32_awkward():
    """float32 values whose rounding to 16 bits is hard: ties of either parity, one ulp around
    them, overflow to inf, subnormal results, the largest finite ones, signed zeros and infinities."""
    rng = np.random.default_rng(0)
    upper = rng.integers(0, 1 << 16, 2000, dtype=np.uint32) << 16
    bits = [upper | 0x8000, upper | 0x7FFF, upper | 0x8001, upper | (1 << 12), upper | (1 << 13) | (1 << 12)]
    bits.append(rng.integers(0, 1 << 32, 4000, dtype=np.uint64).astype(np.uint32))
    x = np.concatenate(bits).view(np.float32)
    special = [0.0, -0.0, np.inf, -np.inf, 65504.0, 65520.0, 65519.99, 6e-8, 3e-8, 2.98e-8, 1e-40, 3.4e38, -3.4e38]
    x = np.concatenate(
        [x, np.array(special, np.float32), np.float32(1 + 2.0**-8) * np.arange(-300, 300, dtype=np.float32)]
    )
    return x[~np.isnan(x)]


@pytest.mark.parametrize("dtype", HALVES, ids=str)
def test_stores_round_as_torch_and_numpy_do_and_loads_widen_exactly(dtype):
    _needs_hardware_float16(dtype)
    bits = BITS[dtype]
    x = _float32_awkward()
    got = np.empty(x.size, bits)
    _through_vectors(x, got)
    want = torch.from_numpy(x).to(dtype).view(torch.int16).numpy().view(bits)
    np.testing.assert_array_equal(got, want)
    if dtype == torch.float16:
        with np.errstate(over="ignore"):
            np.testing.assert_array_equal(got, x.astype(np.float16).view(np.uint16))
    every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(bits)  # every 16-bit pattern, 4096 vectors
    wide = np.empty(every.size + 3, np.float32)
    _through_vectors(np.concatenate([every, every[:3]]), wide)  # the last three widened one by one
    want = torch.from_numpy(every.view(np.int16)).view(dtype).float().numpy()
    nan = np.isnan(want)
    np.testing.assert_array_equal(wide[: every.size][~nan].view(np.uint32), want[~nan].view(np.uint32))
    assert np.isnan(wide[: every.size][nan]).all()
    np.testing.assert_array_equal(wide[every.size :].view(np.uint32), wide[:3].view(np.uint32))


def test_a_nan_stays_a_nan_and_bfloat16_keeps_its_sign():
    # quiet and signalling NaNs of either sign; those with a payload below bfloat16's bits only
    # would round to an infinity: 18 values, a vector and two single stores
    nans = [0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF80FFFF, 0x7FFFFFFF, 0xFF812345]
    x = np.array(nans * 3, np.uint32).view(np.float32)
    for bits, upper in ((np.int16, 0x7F80), (np.uint16, 0x7C00)):
        got = np.empty(x.size, bits)
        _through_vectors(x, got)
        u = got.view(np.uint16).astype(np.int64)
        assert ((u & 0x7FFF) > upper).all() and ((u & 0x7FFF) & ~upper > 0).all()
        if bits is np.int16:
            assert ((u >> 15) == (x.view(np.uint32) >> 31)).all()


def _record_launches(monkeypatch, module):
    """The kernels ``module`` launches from now on: ``(name, dtypes of its array arguments)``, one a launch."""
    calls, launch = [], module.launch

    def recorded(kernel, *args, **kw):
        calls.append((kernel.__name__, [a.dtype for a in args if isinstance(a, np.ndarray)]))
        return launch(kernel, *args, **kw)

    monkeypatch.setattr(module, "launch", recorded)
    return calls


@pytest.fixture
def launches(monkeypatch):
    """The kernels ``cpu/roi_align.py`` launched in the test (:func:`_record_launches`)."""
    return _record_launches(monkeypatch, kernels)


def _boxes(rng, k, images, height, width, scale):
    """Boxes of every kind: inside, half outside, outside, degenerate, tiny, huge, half-way coordinates."""
    side = rng.uniform(0.2, 1.2 * max(height, width) / scale, (k, 2))
    xy = rng.uniform(-0.3 * width / scale, 1.1 * width / scale, (k, 2))
    boxes = np.column_stack([rng.integers(0, images, k), xy, xy + side])
    boxes[:6, 1:] = [
        [-90, -90, -50, -50],
        [3, 3, 3, 3],
        [7, 9, 5, 2],
        [0, 0, 1e5, 1e5],
        [2.5, 4.5, 6.5, 10.5],
        [1, 1, 1.01, 1.01],
    ]
    return torch.from_numpy(boxes.round(2)).float()


def _in_layout(x, layout):
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "strided":  # every other row of a taller map: neither contiguous nor channels-last
        return torch.cat([x, x], dim=2)[:, :, ::2]
    return x


LAYOUTS = ["channels_last", "contiguous", "strided"]


def _kernel_of(launches, dtype):
    """The kernel that computed the last output: ``forward_half`` or ``forward``, the output in 16 bits."""
    name, dtypes = next((n, d) for n, d in reversed(launches) if n.startswith("forward"))
    assert dtypes[-1] == BITS[dtype]  # written in 16 bits, no float32 output narrowed after
    return name


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("path", ["AUTO", "DIRECT", "ROWS_FIRST"])
@pytest.mark.parametrize("dtype", HALVES, ids=str)
def test_a_half_map_gives_the_bits_of_the_float32_route(monkeypatch, launches, dtype, path, layout):
    """Every channel count the register blocks split differently (one scalar channel, a vector and
    a rest, a 128-channel block and a rest), both sampling rules, both ways of evaluating the taps,
    each memory format: the output in the map's dtype and format, bit for bit the float32 call's
    output rounded. ``forward_half`` reads a channels-last map in place, any other through a
    16-bit channels-last copy, and writes an NCHW output channels-last, then turned."""
    _needs_hardware_float16(dtype)
    monkeypatch.setattr(kernels, "TAP_EVALUATION", getattr(kernels, path))
    rng = np.random.default_rng(3)
    for channels in (1, 3, 16, 21, 130, 257):
        x = _in_layout((torch.randn(2, channels, 13, 17) * 40).to(dtype), layout)
        before = x.clone()
        boxes = _boxes(rng, 25, 2, 13, 17, 0.5)
        for size, ratio, aligned in (((7, 5), 2, True), (3, -1, False)):
            got = roipool.roi_align(x, boxes, size, 0.5, ratio, aligned)
            assert _kernel_of(launches, dtype) == "forward_half"
            want = roipool.roi_align(x.float(), boxes, size, 0.5, ratio, aligned).to(dtype)
            assert got.dtype == dtype and got.stride() == want.stride()
            assert torch.equal(got.view(torch.int16), want.view(torch.int16)), (channels, size)
        assert torch.equal(x.view(torch.int16), before.view(torch.int16))  # the map is not modified


@pytest.mark.parametrize("layout", LAYOUTS[:2])
@pytest.mark.parametrize("dtype", HALVES, ids=str)
def test_the_map_row_sweep_of_a_half_map_gives_the_same_bits(monkeypatch, launches, dtype, layout):
    """On a map the sweep is taken for (forced here), pieces of bin rows down strips of the map;
    an NCHW output is then written channels-last in its own memory and turned, in 16 bits."""
    _needs_hardware_float16(dtype)
    x = _in_layout(torch.randn(2, 40, 30, 44).to(dtype), layout)
    boxes = _boxes(np.random.default_rng(8), 60, 2, 30, 44, 0.25)
    want = roipool.roi_align(x.float(), boxes, 7, 0.25, 2, True).to(dtype)
    monkeypatch.setattr(kernels, "sweeps_map_rows", lambda nbytes: True)
    monkeypatch.setattr(kernels, "sweep_strip", lambda rows, cell_bytes: 5)  # strips cut the bin rows
    got = roipool.roi_align(x, boxes, 7, 0.25, 2, True)
    _kernel_of(launches, dtype)
    assert torch.equal(got.view(torch.int16), want.view(torch.int16)) and got.stride() == want.stride()


@pytest.mark.parametrize("layout", ["nhwc", "nchw", "nhwc memory, nchw layout"])
def test_a_float16_array_gives_the_bits_of_astype(launches, layout):
    """NumPy: float16 in, float16 out in the layout asked for, the bits of the float32 call's
    output rounded by ``astype``."""
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((2, 11, 15, 37)) * 100).astype(np.float16)  # NHWC
    boxes = _boxes(rng, 20, 2, 11, 15, 1.0).numpy()
    want = roipool.roi_align(x.astype(np.float32), boxes, 4, 1.0, 2, True, layout="nhwc").astype(np.float16)
    if layout == "nhwc":
        got = roipool.roi_align(x, boxes, 4, 1.0, 2, True, layout="nhwc")
    else:
        given = np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if layout == "nchw" else x.transpose(0, 3, 1, 2)
        got = roipool.roi_align(given, boxes, 4, 1.0, 2, True).transpose(0, 2, 3, 1)
    assert got.dtype == np.float16 and got.shape == (20, 4, 4, 37)
    assert got.flags.c_contiguous == (layout == "nhwc")
    if _tiles.reads_half("float16") is not None:
        assert _kernel_of(launches, torch.float16) == "forward_half"
    np.testing.assert_array_equal(got.view(np.uint16), want.view(np.uint16))
    empty = roipool.roi_align(x, np.zeros((0, 5), np.float32), 4, 1.0, 2, True, layout="nhwc")
    assert empty.shape == (0, 4, 4, 37) and empty.dtype == np.float16


@pytest.mark.parametrize("layout", LAYOUTS[:2])
@pytest.mark.parametrize("dtype", HALVES, ids=str)
def test_without_the_kernels_reading_it_a_half_map_takes_the_float32_route(monkeypatch, launches, dtype, layout):
    """Where the kernels do not read a format (float16 without F16C), the map is widened outside
    them as before: the same bits and memory format either way."""
    x = _in_layout(torch.randn(1, 20, 9, 9).to(dtype), layout)
    boxes = _boxes(np.random.default_rng(2), 10, 1, 9, 9, 1.0)
    direct = roipool.roi_align(x, boxes, 3, 1.0, 2, True)
    monkeypatch.setattr(_tiles, "reads_half", lambda dtype: None)
    del launches[:]
    widened = roipool.roi_align(x, boxes, 3, 1.0, 2, True)
    assert all(np.dtype(np.float32) in dtypes for _, dtypes in launches)
    assert torch.equal(direct.view(torch.int16), widened.view(torch.int16)) and direct.stride() == widened.stride()


@pytest.mark.parametrize("layout", LAYOUTS[:2])
@pytest.mark.parametrize("path", ["DIRECT", "ROWS_FIRST"])
@pytest.mark.parametrize("dtype", HALVES, ids=str)
def test_the_gradient_of_a_half_map_has_the_bits_of_the_float32_route(monkeypatch, launches, dtype, path, layout):
    """The backward reads a 16-bit output gradient (in place when channels-last, else through a
    widened tile) and writes the 16-bit input gradient: the bits of widening the gradient, the
    float32 backward, and rounding; in bands of the map too, and with narrow channel blocks."""
    _needs_hardware_float16(dtype)
    monkeypatch.setattr(kernels, "TAP_EVALUATION", getattr(kernels, path))
    rng = np.random.default_rng(6)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    for channels, band, block in ((3, None, None), (21, 5, None), (150, None, 16)):
        if band:
            monkeypatch.setattr(kernels, "scratch_band", lambda height, *args, band=band: band)
        if block:
            monkeypatch.setattr(kernels, "channel_block", lambda *args, block=block: block)
        x = _in_layout(torch.randn(2, channels, 13, 17).to(dtype), layout)
        boxes = _boxes(rng, 20, 2, 13, 17, 0.5)
        leaf = x.clone().requires_grad_(True)
        y = roipool.roi_align(leaf, boxes, (4, 5), 0.5, 2, True)
        up = torch.randn(y.shape).to(dtype).contiguous(memory_format=fmt)
        (got,) = torch.autograd.grad(y, leaf, up)
        launched = [dtypes for name, dtypes in launches if name == "backward"][-1]
        assert launched[0] == launched[-1] == BITS[dtype]  # 16 bits in and out
        leaf32 = x.float().requires_grad_(True)
        (want,) = torch.autograd.grad(roipool.roi_align(leaf32, boxes, (4, 5), 0.5, 2, True), leaf32, up.float())
        assert got.dtype == dtype and got.stride() == x.stride()
        assert torch.equal(got.view(torch.int16), want.to(dtype).view(torch.int16)), channels


def test_the_gradient_of_a_float16_array_has_the_bits_of_astype():
    rng = np.random.default_rng(7)
    boxes = _boxes(rng, 20, 2, 11, 15, 1.0).numpy()
    grad = (rng.standard_normal((20, 4, 4, 37)) * 10).astype(np.float16)
    for layout, g in (("nhwc", grad), ("nchw", np.ascontiguousarray(grad.transpose(0, 3, 1, 2)))):
        shape = (2, 11, 15, 37) if layout == "nhwc" else (2, 37, 11, 15)
        got = roipool.roi_align_backward(g, boxes, shape, 4, 1.0, 2, True, layout=layout)
        want = roipool.roi_align_backward(g.astype(np.float32), boxes, shape, 4, 1.0, 2, True, layout=layout)
        assert got.dtype == np.float16 and got.shape == shape and got.flags.c_contiguous
        with np.errstate(over="ignore"):
            np.testing.assert_array_equal(got.view(np.uint16), want.astype(np.float16).view(np.uint16))


@pytest.fixture
def pool_launches(monkeypatch):
    """The kernels ``cpu/roi_pool.py`` launched in the test (:func:`_record_launches`)."""
    from roipool.cpu import roi_pool as pool_kernels

    return _record_launches(monkeypatch, pool_kernels)


@pytest.mark.parametrize("sweep", [False, True])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", HALVES, ids=str)
def test_roi_pool_of_a_half_map_gives_the_bits_of_the_float32_route(monkeypatch, pool_launches, dtype, layout, sweep):
    """``roi_pool`` (with and without argmax, and its training step) pools 16-bit cells and stores
    each maximum in 16 bits: the float32 route's output rounded, which is exact, and its argmax.
    Small whole numbers make ties, which the first cell in scan order wins in any precision."""
    from roipool.cpu import roi_pool as pool_kernels

    _needs_hardware_float16(dtype)
    if sweep:  # pieces of bin rows down strips of the map; an NCHW output turned in place after
        monkeypatch.setattr(pool_kernels, "sweeps_map_rows", lambda nbytes: True)
        monkeypatch.setattr(pool_kernels, "sweep_strip", lambda rows, cell_bytes: 5)
    rng = np.random.default_rng(9)
    for channels in (3, 21, 130):
        x = _in_layout(torch.from_numpy(rng.integers(-3, 4, (2, channels, 13, 17))).to(dtype), layout)
        x[0, :, 2, 3] = 1e4 if dtype == torch.float16 else 3e38  # large values round trip too
        boxes = _boxes(rng, 25, 2, 13, 17, 0.5)
        got = roipool.roi_pool(x, boxes, (4, 3), 0.5)
        name, dtypes = [c for c in pool_launches if c[0].startswith("forward")][-1]
        assert dtypes[-1] == BITS[dtype]  # the maxima stored in 16 bits
        want = roipool.roi_pool(x.float(), boxes, (4, 3), 0.5).to(dtype)
        assert got.dtype == dtype and got.stride() == want.stride()
        assert torch.equal(got.view(torch.int16), want.view(torch.int16)), channels
        xn = x.numpy() if dtype == torch.float16 else None
        if xn is not None:  # NumPy, with argmax: the maxima and where they are
            out, argmax = roipool.roi_pool_with_argmax(xn, boxes.numpy(), (4, 3), 0.5)
            out32, argmax32 = roipool.roi_pool_with_argmax(xn.astype(np.float32), boxes.numpy(), (4, 3), 0.5)
            np.testing.assert_array_equal(out.view(np.uint16), out32.astype(np.float16).view(np.uint16))
            np.testing.assert_array_equal(argmax, argmax32)
        leaf = x.clone().requires_grad_(True)
        y = roipool.roi_pool(leaf, boxes, (4, 3), 0.5)
        assert torch.equal(y.view(torch.int16), want.view(torch.int16))
        (grad,) = torch.autograd.grad(y, leaf, torch.ones_like(y))
        leaf32 = x.float().requires_grad_(True)
        y32 = roipool.roi_pool(leaf32, boxes, (4, 3), 0.5)
        (grad32,) = torch.autograd.grad(y32, leaf32, torch.ones_like(y32))
        assert torch.equal(grad.view(torch.int16), grad32.to(dtype).view(torch.int16))


def test_float16_is_read_in_the_kernels_only_with_hardware_conversions(monkeypatch):
    from roipool.cpu import _machine

    assert _tiles.reads_half("bfloat16") == np.int16
    assert _tiles.reads_half("float16") == (np.uint16 if _machine.half_conversions() else None)
    assert _tiles.reads_half(">f2") is None and _tiles.reads_half("float32") is None  # byte-swapped: widened
    monkeypatch.setattr(_tiles, "half_conversions", lambda: False)
    assert _tiles.reads_half("float16") is None and _tiles.reads_half("bfloat16") == np.int16


def test_half_bits_into_an_output_of_another_dtype_are_refused():
    """The launchers' own check (the frontends always pair them): an output of other bits would
    be written as garbage."""
    x = torch.randn(1, 8, 6, 6).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    taps = kernels.RoIAlignTaps(np.array([[0, 0, 0, 4, 4]], np.float32), 1.0, 2, 2, 2, True, 6, 6)
    bits = x.view(torch.int16).numpy()
    for out in (np.empty((1, 8, 2, 2), np.float32), np.empty((1, 8, 2, 2), np.uint16)):
        with pytest.raises(ValueError, match="half-precision bits"):
            kernels.launch_forward(bits, taps, out)
        with pytest.raises(ValueError, match="half-precision bits"):
            kernels.launch_backward(
                np.zeros((1, 2, 2, 8), np.int16).transpose(0, 3, 1, 2), taps, out.reshape(1, 8, 2, 2)
            )
