"""roipool.jax.prroi_pool against the NumPy path: values, input and box gradients, transforms, errors.

As in ``test_jax.py``, the cases of a test share one compiled call: one batch
of boxes holds the random ones and the adversarial ones (corners half-way
between cells after scaling, boxes past the map or wholly outside, inverted,
of zero width or zero area, bins too thin for their position to have a
length, huge boxes).
"""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

import roipool  # noqa: E402
import roipool.jax as rj  # noqa: E402

from .helpers import random_rois  # noqa: E402
from .jax_helpers import assert_close, bits, dtype_fixture, enable_x64  # noqa: E402, F401 (the dtype fixture)
from .test_checks import BAD_BOXES, BAD_INPUTS  # noqa: E402

SHAPE = (2, 4, 9, 11)
SIZE = (3, 2)  # not square: a mix-up of the axes shows
SCALE = 0.25
BACKENDS = ["xla", "callback"]

# rows of cases_rois() after the random ones, by what they test
ADVERSARIAL = {
    "zero width": [0, 8.0, 4.0, 8.0, 30.0],
    "zero area": [1, 2.0, 2.0, 2.0, 2.0],
    "inverted": [1, 26.0, 30.0, 6.0, 3.0],
    "inverted in y only": [0, 6.0, 30.0, 26.0, 3.0],
    "thin bins, limit": [0, 10.0, 10.0, "next", "next"],  # one ulp wide: bins of length 0 (cases_rois)
    "thin bins on a cell centre": [1, 8.0, 12.0, "next", "next"],  # the limit's derivative: the right slope
    "tiny": [1, 9.9, 13.3, 9.9 + 1e-5, 13.3 + 2e-5],
    "huge": [0, -1e6, -1e6, 1e6, 1e6],
    "huge in x": [1, -3e4, 5.0, 3e4, 30.0],
    "wholly outside": [0, 100.0, 100.0, 200.0, 200.0],
    "wholly outside, negative": [1, -50.0, -50.0, -10.0, -10.0],
    "one cell past the border": [0, -6.0, -6.0, 1.0, 2.0],
    "the whole map": [1, 0.0, 0.0, 40.0, 32.0],
}


def cases_rois(seed=0, dtype=np.float32):
    """Random boxes (some past the map, some inverted) then ``ADVERSARIAL``: ``(K, 5)`` float64 image coordinates.

    The "thin bins" box is one ulp of ``dtype`` wide and high: its bins (a third
    and a half of an ulp) round to length 0 in ``dtype``.
    """
    rng = np.random.default_rng(seed)
    n, _, h, w = SHAPE
    rois = random_rois(rng, 20, n, h, w, SCALE)
    rois[::3, 1:] = np.round(rois[::3, 1:] * SCALE) / SCALE + 0.5 / SCALE  # half-way after scaling
    adversarial = [list(box) for box in ADVERSARIAL.values()]
    for box in adversarial:
        for j in (3, 4):  # "next": one ulp above the box's first corner on that axis
            if box[j] == "next":
                box[j] = float(np.nextafter(dtype(box[j - 2]), dtype(np.inf)))
    return np.concatenate([rois, np.array(adversarial)])


def row(name):
    return 20 + list(ADVERSARIAL).index(name)


def cases_map(dtype, seed=0, shape=SHAPE):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def numpy_oracle(x, rois, g):
    """The NumPy path's output, input gradient and box gradient."""
    out = roipool.prroi_pool(x, rois, SIZE, SCALE)
    grad_x = roipool.prroi_pool_backward(g, rois, x.shape, SIZE, SCALE)
    grad_boxes = roipool.prroi_pool_boxes_backward(g, x, rois, SIZE, SCALE)
    return out, grad_x, grad_boxes


_JITTED = {}


def forward_and_grads(backend, layout="nchw"):
    """One jitted function per backend and layout: output and both gradients for an upstream ``g``."""
    key = (backend, layout)
    if key not in _JITTED:

        def run(x, rois, g):
            fn = lambda x, r: rj.prroi_pool(x, r, SIZE, SCALE, backend=backend, layout=layout)  # noqa: E731
            out, vjp = jax.vjp(fn, x, rois)
            return (out, *vjp(g))

        _JITTED[key] = jax.jit(run)
    return _JITTED[key]


@pytest.mark.parametrize("backend", BACKENDS)
def test_values_and_both_gradients_match_numpy_on_random_and_adversarial_boxes(backend, dtype):
    x, rois = cases_map(dtype), cases_rois(dtype=dtype)
    g = np.random.default_rng(1).standard_normal((rois.shape[0], SHAPE[1], *SIZE)).astype(dtype)
    want = numpy_oracle(x, rois, g)
    got = forward_and_grads(backend)(jnp.asarray(x), jnp.asarray(rois, dtype), jnp.asarray(g))
    if backend == "callback":  # the NumPy functions themselves
        for a, b in zip(got, want):
            np.testing.assert_array_equal(bits(a), bits(b))
    else:
        rtol = 1e-12 if dtype == np.float64 else 1e-5
        for a, b in zip(got, want):
            assert_close(a, b, rtol)
    out, _, grad_boxes = (np.asarray(a) for a in got)
    assert (grad_boxes[:, 0] == 0).all()  # the batch index is not a variable
    # the adversarial rows do what they say (else this test would not test them)
    for name in ("zero width", "zero area", "inverted", "inverted in y only", "wholly outside"):
        assert (out[row(name)] == 0).all() and (grad_boxes[row(name)] == 0).all(), name
    for name in (
        "thin bins, limit",
        "thin bins on a cell centre",
        "tiny",
        "one cell past the border",
        "the whole map",
        "huge in x",
    ):
        assert (out[row(name)] != 0).any() and (grad_boxes[row(name), 1:] != 0).all(), name


def test_a_bin_too_thin_for_its_position_takes_the_limit_in_float32():
    # 2.5 plus a third or a half of an ulp rounds to 2.5: the bins have no length, and
    # the NumPy kernels take the value at their start with derivatives +-1/2 (the
    # slope just right of it); the XLA weights must do the same, not divide by zero
    x, rois = cases_map(np.float32), cases_rois()[[row("thin bins, limit")]]
    g = np.ones((1, SHAPE[1], *SIZE), np.float32)
    want = numpy_oracle(x, rois, g)
    got = forward_and_grads("xla")(jnp.asarray(x), jnp.asarray(rois, np.float32), jnp.asarray(g))
    for a, b in zip(got, want):
        assert np.isfinite(np.asarray(a)).all()
        assert_close(a, b, 1e-5)
    # the value at (2.5, 2.5): the mean of four cells
    np.testing.assert_allclose(np.asarray(got[0])[0, :, 0, 0], x[0, :, 2:4, 2:4].mean(axis=(1, 2)), rtol=1e-6)


def test_auto_backend_on_the_cpu_is_the_callback():
    if jax.default_backend() != "cpu":
        pytest.skip("auto picks XLA off the CPU")
    x, rois = jnp.asarray(cases_map(np.float32)), jnp.asarray(cases_rois(), np.float32)
    auto = jax.jit(lambda x, r: rj.prroi_pool(x, r, SIZE, SCALE))(x, rois)
    np.testing.assert_array_equal(bits(auto), bits(roipool.prroi_pool(np.asarray(x), np.asarray(rois), SIZE, SCALE)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_box_sets_and_box_lists(backend):
    x = cases_map(np.float32)
    for boxes in (np.zeros((0, 5), np.float32), [np.zeros((0, 4)), np.zeros((0, 4))]):
        out = rj.prroi_pool(jnp.asarray(x), boxes, SIZE, backend=backend)
        assert out.shape == (0, SHAPE[1], *SIZE)
    grad = jax.grad(lambda x: jnp.sum(rj.prroi_pool(x, jnp.zeros((0, 5)), SIZE, backend=backend)))(jnp.asarray(x))
    assert grad.shape == SHAPE and not np.asarray(grad).any()

    rois = cases_rois()
    listed = [rois[rois[:, 0] == i, 1:].astype(np.float32) for i in range(2)]
    order = np.argsort(rois[:, 0], kind="stable")
    g = np.random.default_rng(4).standard_normal((rois.shape[0], SHAPE[1], *SIZE)).astype(np.float32)

    @jax.jit
    def run(x, boxes, g):
        out, vjp = jax.vjp(lambda b: rj.prroi_pool(x, b, SIZE, SCALE, backend=backend), boxes)
        return out, vjp(g)[0]

    out, grad_list = run(jnp.asarray(x), [jnp.asarray(b) for b in listed], jnp.asarray(g))
    assert_close(out, roipool.prroi_pool(x, rois[order], SIZE, SCALE), 1e-5)
    want_list = roipool.prroi_pool_boxes_backward(g, x, listed, SIZE, SCALE)  # a list of (L_i, 4)
    assert isinstance(grad_list, list) and len(grad_list) == 2
    for a, b in zip(grad_list, want_list):
        assert a.shape == b.shape
        assert_close(a, b, 1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nhwc_layout_gives_the_nchw_values_and_gradients(backend):
    x, rois = cases_map(np.float32), cases_rois(seed=2)
    g = np.random.default_rng(3).standard_normal((rois.shape[0], SHAPE[1], *SIZE)).astype(np.float32)
    want = numpy_oracle(x, rois, g)
    out, grad_x, grad_boxes = forward_and_grads(backend, "nhwc")(
        jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.asarray(rois, np.float32), jnp.asarray(g.transpose(0, 2, 3, 1))
    )
    assert out.shape == (rois.shape[0], *SIZE, SHAPE[1]) and grad_x.shape == (2, 9, 11, SHAPE[1])
    assert_close(out, want[0].transpose(0, 2, 3, 1), 1e-5)
    assert_close(grad_x, want[1].transpose(0, 2, 3, 1), 1e-5)
    assert_close(grad_boxes, want[2], 1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("half, bits_kept", [("float16", 11), ("bfloat16", 8)])
def test_16_bit_inputs_are_computed_in_float32(half, bits_kept, backend):
    xh = jnp.asarray(cases_map(np.float32)).astype(half)
    rois = cases_rois()
    run = jax.jit(lambda x, r: rj.prroi_pool(x, r, SIZE, SCALE, backend=backend))
    got = run(xh, jnp.asarray(rois, np.float32))
    assert got.dtype == jnp.dtype(half)
    want = roipool.prroi_pool(np.asarray(xh.astype(jnp.float32)), rois, SIZE, SCALE)  # float32
    # the float32 result rounded once to the 16-bit type
    np.testing.assert_allclose(np.asarray(got.astype(jnp.float32)), want, rtol=2.0**-bits_kept, atol=1e-6)
    grad = jax.grad(lambda x: jnp.sum(run(x, jnp.asarray(rois, np.float32)).astype(jnp.float32)))(xh)
    assert grad.dtype == jnp.dtype(half) and grad.shape == SHAPE


@pytest.mark.parametrize("backend", BACKENDS)
def test_jit_vmap_over_maps_and_boxes_with_gradients(backend):
    xs = np.stack([cases_map(np.float32, seed=s) for s in range(3)])
    rs = np.stack([cases_rois(seed=s) for s in range(3)]).astype(np.float32)
    weights = np.random.default_rng(6).standard_normal((rs.shape[1], SHAPE[1], *SIZE)).astype(np.float32)

    def loss(x, r):
        return jnp.sum(rj.prroi_pool(x, r, SIZE, SCALE, backend=backend) * weights)

    outs = jax.jit(jax.vmap(lambda x, r: rj.prroi_pool(x, r, SIZE, SCALE, backend=backend)))(xs, rs)
    grad_x, grad_r = jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1))))(jnp.asarray(xs), jnp.asarray(rs))
    for i in range(3):
        out, gx, gb = numpy_oracle(xs[i], rs[i], weights)
        assert_close(outs[i], out, 1e-5)
        assert_close(grad_x[i], gx, 1e-5)
        assert_close(grad_r[i], gb, 1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_check_grads_float64_input_and_boxes(backend):
    with enable_x64(True):
        x = jnp.asarray(np.random.default_rng(5).standard_normal((1, 3, 5, 6)))
        coords = np.array([[1.3, 2.2, 17.1, 13.7], [-3.3, 4.1, 9.7, 19.4], [6.1, 5.3, 31.7, 23.9]])
        # away from kinks: no bin edge within 0.01 of a cell centre, the map's edge or one cell past it
        for c1, c2, pooled in [(coords[:, 1], coords[:, 3], 2), (coords[:, 0], coords[:, 2], 3)]:
            p = np.arange(pooled + 1)[:, None] / pooled
            edges = (c1 + p * (c2 - c1)) * 0.25
            assert np.abs(edges - np.round(edges)).min() > 0.01

        def boxes(c):  # the batch index is not a variable
            return jnp.concatenate([jnp.zeros((3, 1)), c], axis=1)

        pool = jax.jit(lambda x, c: rj.prroi_pool(x, boxes(c), (2, 3), 0.25, backend=backend))
        check_grads(pool, (x, jnp.asarray(coords)), 1, modes=["rev"])


@pytest.mark.parametrize("input, error, words", BAD_INPUTS)
def test_bad_input_gives_the_numpy_paths_errors(input, error, words):
    if isinstance(input, np.ndarray) and input.dtype.kind == "c":
        input = jnp.asarray(input)
    with pytest.raises(error, match=words.replace("a NumPy array", "a jax.Array")):
        rj.prroi_pool(input, np.array([[0, 0, 0, 4, 4]]), 2)
    if isinstance(input, np.ndarray):  # the NumPy path refuses the same input with the same words
        with pytest.raises(error, match=words):
            roipool.prroi_pool(input, np.array([[0, 0, 0, 4, 4]]), 2)


@pytest.mark.parametrize("boxes, error, words", BAD_BOXES)
def test_bad_boxes_give_the_numpy_paths_errors(boxes, error, words):
    with pytest.raises(error, match=words):
        rj.prroi_pool(jnp.zeros((2, 4, 8, 8), jnp.float32), boxes, 2)
    with pytest.raises(error, match=words):
        roipool.prroi_pool(np.zeros((2, 4, 8, 8), np.float32), boxes, 2)


def test_static_argument_errors():
    x = jnp.zeros((2, 4, 8, 8), jnp.float32)
    rois = np.array([[0, 0, 0, 4, 4]])
    for output_size, error in [(0, ValueError), (2.0, TypeError), ((2, 2, 2), ValueError)]:
        with pytest.raises(error, match="output_size"):
            rj.prroi_pool(x, rois, output_size)
    for scale, error in [(-1.0, ValueError), (np.inf, ValueError), ("1", TypeError)]:
        with pytest.raises(error, match="spatial_scale"):
            rj.prroi_pool(x, rois, 2, scale)
    with pytest.raises(ValueError, match="overflows"):  # as the NumPy path: corners times the scale overflow
        rj.prroi_pool(x, np.array([[0, 0, 0, 3e38, 1]], np.float32), 2, 4.0)
    with pytest.raises(ValueError, match="overflows"):
        roipool.prroi_pool(np.zeros((2, 4, 8, 8), np.float32), np.array([[0, 0, 0, 3e38, 1]], np.float32), 2, 4.0)
    with pytest.raises(ValueError, match="backend"):
        rj.prroi_pool(x, rois, 2, backend="tpu")
    with pytest.raises(ValueError, match=r"input must have 4 dimensions \(N, H, W, C\) with layout='nhwc'"):
        rj.prroi_pool(x[0], rois, 2, layout="nhwc")


def test_traced_invalid_boxes_give_nan_and_no_gradient_with_xla():
    x = jnp.ones((2, 4, 8, 8), jnp.float32)
    rois = jnp.asarray(
        [[0, 0, 0, 4, 4], [2, 0, 0, 4, 4], [-1, 0, 0, 4, 4], [0.5, 0, 0, 4, 4], [0, 0, 0, 3e38, 1]], jnp.float32
    )

    def run(x, r):
        return rj.prroi_pool(x, r, 2, 4.0, backend="xla")

    out = jax.jit(run)(x, rois)
    grad_x, grad_r = jax.jit(jax.grad(lambda x, r: jnp.nansum(run(x, r)), argnums=(0, 1)))(x, rois)
    assert np.isfinite(out[0]).all() and np.isnan(out[1:]).all()
    assert np.isfinite(grad_x).all() and np.isfinite(grad_r).all() and not np.asarray(grad_r[1:]).any()
