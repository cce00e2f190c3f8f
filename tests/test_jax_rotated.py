"""roipool.jax.roi_align_rotated against the NumPy functions and the torch op's box gradient.

As in ``tests/test_jax.py``, compiling is most of the cost, so each setting
compiles one call (output, input gradient and box gradient together) and runs
it on a single batch holding random boxes and the adversarial ones: angles 0,
pi/2, pi, negative and large; zero-size, tiny and huge boxes; boxes partly and
wholly off the map; centres half-way between cells after scaling.
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

import roipool  # noqa: E402
import roipool.jax as rj  # noqa: E402
from roipool.jax import _rotated  # noqa: E402

from .jax_helpers import bits, enable_x64  # noqa: E402
from .test_roi_align_rotated import random_rotated_rois  # noqa: E402

SHAPE = (2, 4, 9, 11)
SIZE = (2, 3)
SCALE = 0.25
# (sampling_ratio, aligned, clockwise, dtype): fixed and adaptive grids, both flags both ways, both dtypes
# (each setting compiles its own program, a few seconds each: the list is short)
SETTINGS = [
    (-1, True, False, "float64"),
    (2, False, True, "float64"),
    (0, False, True, "float32"),
]
# Boxes the NumPy path refuses; traced under jit they give NaN and pass no gradient: a batch index out of
# range or not whole, a negative size, NaN and infinite values, an adaptive grid over the limit
INVALID = [
    [2, 4, 4, 4, 4, 0],
    [0.5, 4, 4, 4, 4, 0],
    [0, 4, 4, -1, 4, 0],
    [1, np.nan, 4, 4, 4, 0],
    [0, 4, 4, 4, 4, np.inf],
    [1, 4, 4, 1e9, 4, 0],
]


def cases_rois(seed=0, adversarial=True):
    """``(K, 6)`` float64 rotated boxes in image coordinates: random ones and, if asked, the adversarial ones."""
    rng = np.random.default_rng(seed)
    n, _, h, w = SHAPE
    rois = random_rotated_rois(rng, 16, n, h, w, SCALE)
    if not adversarial:
        return rois
    pi = math.pi
    # centres half-way between cells after scaling (cx * SCALE - 0.5 an integer + 0.5 with aligned)
    half = [[0, (4 + 0.5) / SCALE, (3 + 0.5) / SCALE, 8.0, 12.0, 0.0], [1, 4 / SCALE, 2 / SCALE, 12.0, 4.0, pi / 2]]
    special = [
        [0, 20.0, 18.0, 16.0, 8.0, pi],  # half turn
        [1, 22.0, 14.0, 20.0, 6.0, -0.7],  # negative angle
        [0, 25.0, 20.0, 10.0, 14.0, 1000.0],  # large angle (wraps)
        [1, 18.0, 16.0, 0.0, 0.0, 0.3],  # zero size (a point)
        [0, 30.0, 10.0, 0.0, 9.0, 0.4],  # zero width
        [1, 10.0, 10.0, 0.01, 0.02, -2.0],  # tiny
        [0, 20.0, 20.0, 4e4, 3e3, 0.3],  # huge: many steps of the sample loop
        [1, -1e3, 5.0, 3e3, 8.0, 0.0],  # long, mostly off the map
        [0, -6.0, 30.0, 12.0, 20.0, 0.2],  # partly off the map
        [1, 400.0, 400.0, 40.0, 40.0, 1.0],  # wholly off the map
        [0, -300.0, 18.0, 100.0, 30.0, -pi / 2],  # wholly off the map, on the other side
    ]
    return np.concatenate([rois, np.array(half + special)])


def cases_map(dtype, seed=0, shape=SHAPE):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def args_of(setting):
    sampling_ratio, aligned, clockwise, _ = setting
    return SIZE, SCALE, sampling_ratio, aligned, clockwise


_JITTED = {}


def jax_all(setting, backend):
    """One jitted call per setting and backend: output, input gradient and box gradient for an upstream ``g``."""
    key = (setting, backend)
    if key not in _JITTED:

        def run(x, rois, g):
            def f(x, rois):
                return rj.roi_align_rotated(x, rois, *args_of(setting), backend=backend)

            out, vjp = jax.vjp(f, x, rois)
            return (out, *vjp(g))

        _JITTED[key] = jax.jit(run)
    return _JITTED[key]


def torch_box_grad(x, rois, g, setting):
    """The torch op's box gradient (``torch.autograd.grad`` through ``roipool.roi_align_rotated``) in ``x``'s dtype.

    The torch op sums it in float64 whatever the dtype; a float32 map and boxes
    give it the float32 frame (centre, size, sin, cos) that the float32 forward has.
    """
    torch = pytest.importorskip("torch")
    xt = torch.from_numpy(np.ascontiguousarray(x))
    rt = torch.tensor(rois, dtype=xt.dtype, requires_grad=True)
    out = roipool.roi_align_rotated(xt, rt, *args_of(setting))
    return torch.autograd.grad(out, rt, torch.from_numpy(np.ascontiguousarray(g)))[0].numpy()


def close(got, want, rtol):
    """Equal within ``rtol`` of the largest magnitude (at least 1)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=rtol * max(np.abs(want).max(initial=0), 1))


@pytest.fixture(params=SETTINGS, ids=lambda s: f"sr{s[0]}-aligned{s[1]}-cw{s[2]}-{s[3]}")
def setting(request):
    if request.param[3] == "float64":
        with enable_x64(True):
            yield request.param
    else:
        yield request.param


@pytest.mark.parametrize("backend", ["xla", "callback"])
def test_values_and_gradients_match_numpy_and_torch(setting, backend):
    dtype = np.dtype(setting[3])
    x, rois = cases_map(dtype), cases_rois().astype(dtype)
    k = rois.shape[0]
    args = args_of(setting)
    want = roipool.roi_align_rotated(x, rois, *args)
    g = np.random.default_rng(1).standard_normal(want.shape).astype(dtype)
    want_gx = roipool.roi_align_rotated_backward(g, rois, x.shape, *args)
    want_gr = torch_box_grad(x, rois, g, setting)
    if backend == "xla":  # the invalid boxes ride along, traced (the last one is valid with a fixed grid)
        rois = np.concatenate([rois, np.array(INVALID if setting[0] <= 0 else INVALID[:-1], dtype)])
        g = np.concatenate([g, np.ones((rois.shape[0] - k, *g.shape[1:]), dtype)])
    out, gx, gr = jax_all(setting, backend)(jnp.asarray(x), jnp.asarray(rois), jnp.asarray(g))
    assert out.dtype == dtype and gx.dtype == dtype and gr.shape == rois.shape
    if backend == "callback":  # the NumPy kernels and the torch op's box kernel themselves
        np.testing.assert_array_equal(bits(out), bits(want))
        np.testing.assert_array_equal(bits(gx), bits(want_gx))
        np.testing.assert_array_equal(bits(gr), bits(want_gr))
        return
    assert np.isnan(out[k:]).all() and not np.asarray(gr[k:]).any()
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    close(out[:k], want, rtol)
    close(gx, want_gx, rtol)  # the invalid boxes added nothing
    assert not np.asarray(gr)[:, 0].any()
    if dtype == np.float64:
        close(gr[:k], want_gr, 1e-10)
    else:
        # float32 positions against the kernel's float64 ones: for the random boxes the sums agree to
        # rounding; samples on a kink (the half-way boxes) may take the other side, far centres lose
        # bits, so the adversarial boxes are held to the float64 settings only
        close(gr[:16], want_gr[:16], 1e-5)
    if setting[0] <= 0:  # the huge boxes took several steps of the adaptive sample loop
        f = _rotated.frames(jnp.asarray(rois, dtype), SHAPE[0], SHAPE[2], SHAPE[3], (*args, None))
        assert int(_rotated._steps(f, _rotated.samples_per_step(setting[0]))) > 10


def test_default_backend_on_cpu_is_the_callback():
    x, rois = cases_map(np.float32), cases_rois()
    got = rj.roi_align_rotated(jnp.asarray(x), rois, SIZE, SCALE)
    np.testing.assert_array_equal(bits(got), bits(roipool.roi_align_rotated(x, rois, SIZE, SCALE)))


@pytest.mark.parametrize("backend", ["xla", "callback"])
def test_samples_off_the_map_read_nothing(backend):
    # A NaN and an infinity in each image's first cell, where the XLA path points samples that
    # lie off the map: boxes partly and wholly off the map (and one reading the cell) must give
    # the NumPy path's values, NaN only where a sample on the map reads the NaN.
    x = cases_map(np.float32)
    x[0, :, 0, 0], x[1, :, 0, 0] = np.nan, np.inf
    rois = np.array(
        [[0, 40, 30, 8, 8, 0.3], [1, -20, -20, 6, 4, 1.0], [0, 2, 30, 16, 12, -0.5], [1, 42, 2, 10, 6, 2.0]],
        np.float32,
    )
    rois = np.concatenate([rois, [[0, 1, 1, 4, 4, 0.0]]]).astype(np.float32)  # reads the NaN
    want = roipool.roi_align_rotated(x, rois, SIZE, SCALE, 2)
    got = jax.jit(lambda x, r: rj.roi_align_rotated(x, r, SIZE, SCALE, 2, backend=backend))(x, rois)
    assert np.isnan(want[-1]).all() and np.isfinite(want[:-1]).all()
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["xla", "callback"])
def test_empty_box_sets(backend):
    x = jnp.asarray(cases_map(np.float32))
    for boxes in (np.zeros((0, 6), np.float32), [np.zeros((0, 5)), np.zeros((0, 5))]):
        out, vjp = jax.vjp(lambda x, boxes=boxes: rj.roi_align_rotated(x, boxes, SIZE, backend=backend), x)
        assert out.shape == (0, SHAPE[1], *SIZE)
        (gx,) = vjp(out)
        assert gx.shape == SHAPE and not np.asarray(gx).any()


@pytest.mark.parametrize("backend", ["xla", "callback"])
def test_nhwc_layout_and_box_lists_give_the_numpy_values_and_gradients(backend):
    """One compiled call: a channels-last map ``(N, H, W, C)`` and the boxes as a list of ``(L_i, 5)``
    arrays (traced) give the ``(K, PH, PW, C)`` values and ``(N, H, W, C)`` gradient of the NumPy
    path called with the ``(K, 6)`` rows sorted by image."""
    x, rois = cases_map(np.float32), cases_rois(seed=2).astype(np.float32)
    order = np.argsort(rois[:, 0], kind="stable")
    rois = rois[order]
    listed = [jnp.asarray(rois[rois[:, 0] == i, 1:]) for i in range(SHAPE[0])]
    args = (SIZE, SCALE, 2, True, False)
    want = roipool.roi_align_rotated(x, rois, *args)
    g = np.random.default_rng(3).standard_normal(want.shape).astype(np.float32)
    want_gx = roipool.roi_align_rotated_backward(g, rois, x.shape, *args)
    want_gr = torch_box_grad(x, rois, g, (2, True, False, "float32"))

    @jax.jit
    def run(x_nhwc, boxes, g_nhwc):
        out, vjp = jax.vjp(
            lambda x, b: rj.roi_align_rotated(x, b, *args, backend=backend, layout="nhwc"), x_nhwc, boxes
        )
        return (out, *vjp(g_nhwc))

    out, gx, gr = run(jnp.asarray(x.transpose(0, 2, 3, 1)), listed, jnp.asarray(g.transpose(0, 2, 3, 1)))
    assert out.shape == (rois.shape[0], *SIZE, SHAPE[1]) and gx.shape == (2, 9, 11, 4)
    assert [b.shape for b in gr] == [b.shape for b in listed]
    close(out, want.transpose(0, 2, 3, 1), 1e-5)
    close(gx, want_gx.transpose(0, 2, 3, 1), 1e-5)
    close(np.concatenate(gr), want_gr[:, 1:], 1e-5 if backend == "callback" else 1e-3)


def test_16_bit_inputs_are_computed_in_float32():
    x, rois = jnp.asarray(cases_map(np.float32)), cases_rois()
    halves = (jnp.float16, jnp.bfloat16)

    @jax.jit
    def run(xs, r):
        return [rj.roi_align_rotated(x, r, SIZE, SCALE, backend="xla") for x in xs]

    for half, got in zip(halves, run([x.astype(h) for h in halves], jnp.asarray(rois))):
        xh = np.asarray(x.astype(half).astype(jnp.float32))
        want = roipool.roi_align_rotated(xh, rois, SIZE, SCALE)  # float32
        assert got.dtype == half
        bits_kept = 8 if half == jnp.bfloat16 else 11  # the float32 result rounded once
        np.testing.assert_allclose(np.asarray(got.astype(jnp.float32)), want, rtol=2.0**-bits_kept, atol=1e-6)
        cb = rj.roi_align_rotated(x.astype(half), rois, SIZE, SCALE, backend="callback")
        assert cb.dtype == half
        np.testing.assert_array_equal(np.asarray(cb.astype(jnp.float32)), np.asarray(jnp.asarray(want).astype(half)))


@pytest.mark.parametrize("backend", ["xla", "callback"])
def test_jit_vmap_grad_over_maps_and_boxes(backend):
    xs = np.stack([cases_map(np.float32, seed=s) for s in range(2)])
    rs = np.stack([cases_rois(seed=s, adversarial=False) for s in range(2)]).astype(np.float32)
    gs = np.random.default_rng(4).standard_normal((2, rs.shape[1], SHAPE[1], *SIZE)).astype(np.float32)

    def loss(x, r, g):
        return jnp.sum(rj.roi_align_rotated(x, r, SIZE, SCALE, -1, backend=backend) * g)

    value_and_grads = jax.jit(jax.vmap(jax.value_and_grad(loss, argnums=(0, 1))))
    values, (gx, gr) = value_and_grads(jnp.asarray(xs), jnp.asarray(rs), jnp.asarray(gs))
    for i in range(2):
        out = roipool.roi_align_rotated(xs[i], rs[i], SIZE, SCALE)
        np.testing.assert_allclose(values[i], np.sum(out.astype(np.float64) * gs[i]), rtol=1e-4)
        close(gx[i], roipool.roi_align_rotated_backward(gs[i], rs[i], xs[i].shape, SIZE, SCALE), 1e-5)
        close(gr[i], torch_box_grad(xs[i], rs[i], gs[i], (-1, True, False, "float32")), 1e-4)


@pytest.mark.parametrize("backend", ["xla", "callback"])
def test_check_grads_float64_input_and_boxes(backend):
    with enable_x64(True):
        x = jnp.asarray(cases_map(np.float64, seed=5, shape=(1, 3, 6, 7)))
        # a fixed grid and samples away from whole cell coordinates and the border: smooth in the boxes
        coords = jnp.asarray([[11.3, 9.7, 9.2, 6.1, 0.37], [14.1, 12.9, 7.3, 10.2, -2.3]])

        def boxes(c):  # the batch index is not a variable
            return jnp.concatenate([jnp.zeros((2, 1)), c], axis=1)

        f = jax.jit(lambda x, c: rj.roi_align_rotated(x, boxes(c), 2, 0.5, 2, True, True, backend=backend))
        check_grads(f, (x, coords), 1, modes=["rev"])


@pytest.mark.parametrize(
    "boxes, error, words",
    [
        (np.array([[0, 4, 4, 4, 4]]), ValueError, "5 columns given"),
        (np.array([[0, 4, 4, -2, 4, 0]]), ValueError, "negative size"),
        (np.array([[0, 4, np.nan, 2, 4, 0]]), ValueError, "NaN or infinite"),
        (np.array([[3, 4, 4, 2, 4, 0]]), ValueError, "batch index"),
        ([np.zeros((1, 4)), np.zeros((0, 5))], ValueError, "the angle is missing"),
        (np.array([[0, 4, 4, 1e8, 4, 0]]), ValueError, "adaptive samples"),
        (np.array([[0, 4, 4, 2, 4, 0]], complex), TypeError, "real"),
    ],
)
@pytest.mark.parametrize("backend", ["xla", "callback"])
def test_bad_boxes_give_the_numpy_paths_errors(boxes, error, words, backend):
    x = np.zeros((2, 4, 8, 8), np.float32)
    with pytest.raises(error, match=words):
        roipool.roi_align_rotated(x, boxes, 2)
    with pytest.raises(error, match=words):
        rj.roi_align_rotated(jnp.asarray(x), boxes, 2, backend=backend)


def test_importing_roipool_jax_loads_no_numba_kernels():
    code = "import sys, roipool.jax; assert 'numba' not in sys.modules and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_static_argument_errors():
    x = jnp.zeros((2, 4, 8, 8), jnp.float32)
    rois = np.array([[0, 4, 4, 2, 2, 0]])
    with pytest.raises(ValueError, match="output_size"):
        rj.roi_align_rotated(x, rois, 0)
    with pytest.raises(ValueError, match="spatial_scale"):
        rj.roi_align_rotated(x, rois, 2, -1.0)
    with pytest.raises(TypeError, match="clockwise"):
        rj.roi_align_rotated(x, rois, 2, 1.0, 2, True, 1)
    with pytest.raises(ValueError, match="spatial_scale=1e\\+300 is not representable"):
        rj.roi_align_rotated(x, rois, 2, 1e300)
    with pytest.raises(ValueError, match="layout"):
        rj.roi_align_rotated(x, rois, 2, layout="NHWC?")
    with pytest.raises(TypeError, match="input must be a jax.Array"):
        rj.roi_align_rotated([[1.0]], rois, 2)
    with pytest.raises(ValueError, match="sampling_ratio must be at most 1024"):  # int32 sample counts hold 1024**2
        rj.roi_align_rotated(x, rois, 2, 1.0, 1025, backend="xla")
