"""roipool.jax against roipool's NumPy functions: values, gradients, transforms, errors.

JAX compiles once per op, shape and static argument, and compiling is most of
the cost here, so the cases of a test share one call: a single batch of boxes
holds the random and the adversarial ones (half-way corners, boxes past the
map or wholly outside, inverted, tiny, huge), the maps hold ties.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

import roipool  # noqa: E402
import roipool.jax as rj  # noqa: E402
from roipool._numpy import _layout  # noqa: E402
from roipool.jax import _ops  # noqa: E402

from .helpers import random_rois  # noqa: E402
from .jax_helpers import bits, dtype_fixture, enable_x64, take_callback  # noqa: E402, F401 (the dtype fixture)
from .test_checks import BAD_BOXES, BAD_INPUTS  # noqa: E402

SHAPE = (2, 8, 9, 11)  # C = 8: a multiple of the 2x2 bins of the position-sensitive ops
SIZE = (2, 2)
SCALE = 0.25
OPS = {
    "roi_pool": {},
    "roi_align": {"sampling_ratio": -1, "aligned": False},
    "roi_align_aligned": {"sampling_ratio": 2, "aligned": True},
    "ps_roi_pool": {},
    "ps_roi_align": {"sampling_ratio": -1},
}


def op_name(case):
    return case.replace("_aligned", "")


def cases_rois(seed=0):
    """Random boxes (past the map, inverted) and the adversarial ones, ``(K, 5)`` float64 image coordinates."""
    rng = np.random.default_rng(seed)
    n, _, h, w = SHAPE
    rois = random_rois(rng, 24, n, h, w, SCALE)
    rois[::3, 1:] = np.round(rois[::3, 1:] * SCALE) / SCALE + 0.5 / SCALE  # half-way after scaling
    adversarial = [
        [0, 2.0, 2.0, 2.0, 2.0],  # tiny (one point), half-way
        [1, 6.0, 10.0, 2.0, 1.0],  # inverted
        [0, -1e6, -1e6, 1e6, 1e6],  # huge: many windows / sample chunks
        [1, -3e4, 5.0, 3e4, 30.0],  # huge in one axis
        [0, 100.0, 100.0, 200.0, 200.0],  # wholly outside
        [1, -50.0, -50.0, -10.0, -10.0],  # wholly outside, negative
        [0, 0.0, 0.0, 44.0, 36.0],  # the whole map
    ]
    return np.concatenate([rois, np.array(adversarial)])


def cases_map(dtype, seed=0):
    """Values rounded to a few levels, so that bins hold ties (and -0.0 next to 0.0)."""
    rng = np.random.default_rng(seed)
    x = np.round(rng.standard_normal(SHAPE) * 2) / 2
    x[x == 0] = np.where(rng.random((x == 0).sum()) < 0.5, -0.0, 0.0)
    return x.astype(dtype)


def numpy_forward_and_grad(case, x, rois, g):
    """The NumPy path's output and input gradient (the oracle)."""
    op, kw = op_name(case), OPS[case]
    out = getattr(roipool, op)(x, rois, SIZE, SCALE, **kw)
    if op == "roi_pool":
        _, argmax = roipool.roi_pool_with_argmax(x, rois, SIZE, SCALE)
        return out, roipool.roi_pool_backward(g, argmax, rois, x.shape)
    return out, getattr(roipool, op + "_backward")(g, rois, x.shape, SIZE, SCALE, **kw)


_JITTED = {}


def jax_forward_and_grad(case, backend):
    """One jitted function per case and backend: output and input gradient for an upstream ``g``."""
    key = (case, backend)
    if key not in _JITTED:
        fn = getattr(rj, op_name(case))

        def run(x, rois, g):
            out, vjp = jax.vjp(lambda x: fn(x, rois, SIZE, SCALE, backend=backend, **OPS[case]), x)
            return out, vjp(g)[0]

        _JITTED[key] = jax.jit(run)
    return _JITTED[key]


@pytest.mark.parametrize("case", list(OPS))
def test_xla_path_matches_numpy_on_random_and_adversarial_boxes(case, dtype):
    x, rois = cases_map(dtype), cases_rois()
    out0 = getattr(roipool, op_name(case))(x, rois, SIZE, SCALE, **OPS[case])
    g = np.random.default_rng(1).standard_normal(out0.shape).astype(dtype)
    want_out, want_grad = numpy_forward_and_grad(case, x, rois, g)
    out, grad = jax_forward_and_grad(case, "xla")(jnp.asarray(x), jnp.asarray(rois, dtype), jnp.asarray(g))
    assert out.dtype == dtype and out.shape == want_out.shape and grad.shape == x.shape
    if case == "roi_pool":
        # bit for bit, -0.0 included, and the gradient's sums in the same order
        np.testing.assert_array_equal(bits(out), bits(want_out))
        np.testing.assert_array_equal(bits(grad), bits(want_grad))
    else:
        rtol = 1e-12 if dtype == np.float64 else 1e-5
        scale_out = max(np.abs(want_out).max(), 1)
        scale_grad = max(np.abs(want_grad).max(), 1)
        np.testing.assert_allclose(out, want_out, rtol=0, atol=rtol * scale_out)
        np.testing.assert_allclose(grad, want_grad, rtol=0, atol=rtol * scale_grad)


def test_xla_ps_roi_align_places_the_samples_of_huge_boxes_as_numpy(dtype):
    # ps_roi_align rounds i + 0.5 once (roi_align rounds i, then adds 0.5): the two differ past
    # 2**24 samples a side in float32, here about 1.4e8 (the XLA path took roi_align's rule and
    # was off by 3% of the summed terms). Grids stay below 2**31, where the XLA path caps them.
    rng = np.random.default_rng(21)
    x = rng.standard_normal((1, 8, 6, 7)).astype(dtype)
    e = 1e9
    rois = np.array([[0, -e, -e, e, 0.25 * e], [0, -e, -0.5 * e, 3.0, 4.0], [0, 2.5, 1.0, e, e], [0, -e, 1.5, e, 5.0]])
    rois = rois.astype(dtype)
    want = roipool.ps_roi_align(x, rois, SIZE, 1.0, -1)
    terms = roipool.ps_roi_align(np.abs(x), rois, SIZE, 1.0, -1)
    got = np.asarray(rj.ps_roi_align(jnp.asarray(x), jnp.asarray(rois), SIZE, 1.0, -1, backend="xla"))
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    assert np.abs(want).max() > 0
    assert (np.abs(got - want) <= rtol * terms).all()


@pytest.mark.parametrize("op", ["roi_align", "ps_roi_align"])
def test_xla_weights_of_a_large_grid_add_up_without_drift(op, dtype):
    # 2**16 samples a side are summed in thousands of loop steps: added plainly in float32 the
    # weights drifted by 9e-5 of the terms (1e-3 at 2**20) on a zero-size box, every sample at
    # one point (found by differential fuzzing); compensated, they stay at float rounding
    rng = np.random.default_rng(23)
    x = rng.standard_normal((1, 4, 5, 6)).astype(dtype)
    rois = np.array([[0, 2.2, 1.7, 2.2, 1.7], [0, 0.6, 1.1, 4.3, 3.9]], dtype)
    kwargs = {"sampling_ratio": 2**16, **({"aligned": True} if op == "roi_align" else {})}
    want = getattr(roipool, op)(x, rois, (1, 2), 1.0, **kwargs)
    terms = getattr(roipool, op)(np.abs(x), rois, (1, 2), 1.0, **kwargs)
    got = np.asarray(getattr(rj, op)(jnp.asarray(x), jnp.asarray(rois), (1, 2), 1.0, **kwargs, backend="xla"))
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    assert np.abs(want).min() > 0
    assert (np.abs(got - want) <= rtol * terms).all()


@pytest.mark.parametrize("case", list(OPS))
def test_callback_path_is_the_numpy_path(case):
    x, rois = cases_map(np.float32), cases_rois(seed=1)
    out0 = getattr(roipool, op_name(case))(x, rois, SIZE, SCALE, **OPS[case])
    g = np.random.default_rng(2).standard_normal(out0.shape).astype(np.float32)
    want_out, want_grad = numpy_forward_and_grad(case, x, rois, g)
    out, grad = jax_forward_and_grad(case, "callback")(jnp.asarray(x), jnp.asarray(rois, np.float32), jnp.asarray(g))
    np.testing.assert_array_equal(bits(out), bits(want_out))
    np.testing.assert_array_equal(bits(grad), bits(want_grad))


needs_buffer_callback = pytest.mark.skipif(
    _ops._buffer_callback is None, reason="this JAX has no jax.experimental.buffer_callback"
)


@needs_buffer_callback
@pytest.mark.parametrize("name", ["roi_align", "roi_pool", "prroi_pool", "ps_roi_pool", "ps_roi_align"])
def test_callback_kernels_write_into_xlas_output_buffer(name, monkeypatch):
    # the array the NumPy function allocates is XLA's buffer: the jitted program's output itself
    allocated = []
    empty = _layout.empty
    monkeypatch.setattr(_layout, "empty", lambda *a, **k: allocated.append(empty(*a, **k)) or allocated[-1])
    x, rois = cases_map(np.float32), cases_rois(seed=1).astype(np.float32)
    out = jax.jit(lambda x, r: getattr(rj, name)(x, r, SIZE, SCALE, backend="callback"))(x, rois)
    assert [a.ctypes.data for a in allocated] == [out.unsafe_buffer_pointer()]
    np.testing.assert_array_equal(bits(out), bits(getattr(roipool, name)(x, rois, SIZE, SCALE)))


@pytest.mark.parametrize("case", list(OPS))
def test_callback_path_without_buffer_callback_is_the_numpy_path(case, monkeypatch):
    # a JAX without buffer_callback: pure_callback, which copies the result, gives the same bits
    monkeypatch.setattr(_ops, "_buffer_callback", None)
    x, rois = cases_map(np.float32), cases_rois(seed=1).astype(np.float32)
    out0 = getattr(roipool, op_name(case))(x, rois, SIZE, SCALE, **OPS[case])
    g = np.random.default_rng(2).standard_normal(out0.shape).astype(np.float32)
    want_out, want_grad = numpy_forward_and_grad(case, x, rois, g)

    @jax.jit
    def run(x, rois, g):
        fn = getattr(rj, op_name(case))
        out, vjp = jax.vjp(lambda x: fn(x, rois, SIZE, SCALE, backend="callback", **OPS[case]), x)
        return out, vjp(g)[0]

    out, grad = run(x, rois, g)
    np.testing.assert_array_equal(bits(out), bits(want_out))
    np.testing.assert_array_equal(bits(grad), bits(want_grad))


@pytest.mark.parametrize("callback", ["buffer_callback", "pure_callback"])
def test_callback_errors_at_run_time_carry_the_numpy_message(callback, monkeypatch):
    take_callback(callback, monkeypatch)
    x, rois = cases_map(np.float32), cases_rois(seed=1).astype(np.float32)
    rois[3, 0] = 7  # only 2 images: found by the NumPy function inside the callback, under jit
    run = jax.jit(lambda x, r: rj.roi_align(x, r, SIZE, SCALE, backend="callback"))
    with pytest.raises(jax.errors.JaxRuntimeError, match=r"boxes\[3, 0\] is the batch index and must be in \[0, 2\)"):
        run(x, rois).block_until_ready()


@pytest.mark.parametrize("callback", ["buffer_callback", "pure_callback"])
def test_callback_roi_pool_gradient_goes_through_the_forwards_argmax(callback, monkeypatch):
    # with buffer_callback the argmax is handed over without a copy: the backward scatters through it;
    # with pure_callback the backward finds the maxima again from the input. The same bits.
    take_callback(callback, monkeypatch)
    routes = []
    backward = roipool.roi_pool_backward
    monkeypatch.setattr(
        roipool,
        "roi_pool_backward",
        lambda g, a, *rest, **kw: routes.append(a is not None) or backward(g, a, *rest, **kw),
    )
    x, rois = cases_map(np.float32), cases_rois(seed=1).astype(np.float32)
    out0 = roipool.roi_pool(x, rois, SIZE, SCALE)
    g = np.random.default_rng(2).standard_normal(out0.shape).astype(np.float32)
    xs, rs, gs = np.stack([x, x[::-1]]), np.stack([rois, rois]), np.stack([g, -g])

    def step(x, r, g):
        out, vjp = jax.vjp(lambda x: rj.roi_pool(x, r, SIZE, SCALE, backend="callback"), x)
        return out, vjp(g)[0]

    outs, grads = jax.jit(jax.vmap(step))(xs, rs, gs)  # two results (output and argmax) per example
    assert routes == [callback == "buffer_callback"] * 2
    for i in range(2):
        want_out, want_grad = numpy_forward_and_grad("roi_pool", xs[i], rois, gs[i])
        np.testing.assert_array_equal(bits(outs[i]), bits(want_out))
        np.testing.assert_array_equal(bits(grads[i]), bits(want_grad))


@needs_buffer_callback
def test_a_callback_result_of_another_shape_is_refused():
    wrong = jax.jit(lambda x: _ops._call(lambda x: np.zeros(3, np.float32), jax.ShapeDtypeStruct((2,), x.dtype), x))
    with pytest.raises(jax.errors.JaxRuntimeError, match=r"result has shape \(3,\), its output \(2,\)"):
        wrong(jnp.ones(2, jnp.float32)).block_until_ready()


def test_roi_pool_special_values_follow_the_reference_scan():
    # NaN wins (the first in row-major order) and takes the gradient; a bin of
    # only -inf returns -inf from its first cell; -0.0 before 0.0 stays -0.0
    x = np.zeros(SHAPE, np.float32)
    x[0, 0, 1, 1] = x[0, 0, 2, 2] = np.nan
    x[0, 1] = -np.inf
    x[0, 2, 0, 0], x[0, 2, 0, 1] = -0.0, 0.0
    x[1] = np.arange(9 * 11, dtype=np.float32).reshape(9, 11) % 7  # ties everywhere
    rois = cases_rois(seed=2)
    rois[:4] = [[0, 0, 0, 12, 12], [0, 8, 8, 12, 12], [0, 0, 0, 4, 0], [1, 0, 0, 40, 30]]
    g = np.ones((rois.shape[0], SHAPE[1], *SIZE), np.float32)
    want_out, want_grad = numpy_forward_and_grad("roi_pool", x, rois, g)
    out, grad = jax_forward_and_grad("roi_pool", "xla")(jnp.asarray(x), jnp.asarray(rois, np.float32), jnp.asarray(g))
    np.testing.assert_array_equal(bits(out), bits(want_out))
    np.testing.assert_array_equal(bits(grad), bits(want_grad))
    assert np.isnan(out[0, 0]).any() and (np.asarray(out[0, 1]) == -np.inf).all()
    assert np.signbit(out[2, 2, 0, 0])


def test_jit_vmap_over_maps_and_boxes():
    xs = np.stack([cases_map(np.float32, seed=s) for s in range(3)])
    rs = np.stack([cases_rois(seed=s) for s in range(3)]).astype(np.float32)

    @jax.jit
    @jax.vmap
    def both(x, r):
        return rj.roi_pool(x, r, SIZE, SCALE, backend="xla"), rj.roi_align(x, r, SIZE, SCALE, backend="xla")

    pool, align = both(jnp.asarray(xs), jnp.asarray(rs))
    for i in range(3):
        np.testing.assert_array_equal(bits(pool[i]), bits(roipool.roi_pool(xs[i], rs[i], SIZE, SCALE)))
        np.testing.assert_allclose(align[i], roipool.roi_align(xs[i], rs[i], SIZE, SCALE), atol=1e-5 * 4)


def test_callback_path_under_vmap_and_grad():
    xs = np.stack([cases_map(np.float32, seed=s) for s in range(2)])
    rs = np.stack([cases_rois(seed=s) for s in range(2)]).astype(np.float32)

    def loss(x, r):
        return jnp.sum(rj.roi_align(x, r, SIZE, SCALE, backend="callback") ** 2)

    grads = jax.jit(jax.vmap(jax.grad(loss)))(jnp.asarray(xs), jnp.asarray(rs))
    for i in range(2):
        out = roipool.roi_align(xs[i], rs[i], SIZE, SCALE)
        want = roipool.roi_align_backward(2 * out, rs[i], xs[i].shape, SIZE, SCALE)
        np.testing.assert_array_equal(np.asarray(grads[i]), want)


@pytest.mark.parametrize("mapped", ["both", "maps", "boxes", "nested"])
def test_callback_under_vmap_gives_each_examples_numpy_bits(mapped):
    # one callback takes the batch; an argument not mapped over is shared by every example
    xs = np.stack([cases_map(np.float32, seed=s) for s in range(6)])
    rs = np.stack([cases_rois(seed=s) for s in range(6)]).astype(np.float32)
    g = np.random.default_rng(3).standard_normal((rs.shape[1], SHAPE[1], *SIZE)).astype(np.float32)

    def one(x, r):  # forward, and the map's gradient for a fixed upstream gradient
        out, vjp = jax.vjp(lambda x: rj.roi_align(x, r, SIZE, SCALE, 2, True, backend="callback"), x)
        return out, vjp(jnp.asarray(g))[0], rj.prroi_pool(x, r, SIZE, SCALE, backend="callback")

    if mapped == "both":
        run, pairs = jax.vmap(one), lambda: [(xs[i], rs[i]) for i in range(6)]
        args = (xs, rs)
    elif mapped == "maps":
        run, pairs, args = jax.vmap(one, (0, None)), lambda: [(xs[i], rs[0]) for i in range(6)], (xs, rs[0])
    elif mapped == "boxes":
        run, pairs, args = jax.vmap(one, (None, 0)), lambda: [(xs[0], rs[i]) for i in range(6)], (xs[0], rs)
    else:
        run, pairs = jax.vmap(jax.vmap(one)), lambda: [(xs[i], rs[i]) for i in range(6)]
        args = (xs.reshape(2, 3, *xs.shape[1:]), rs.reshape(2, 3, *rs.shape[1:]))
    outs, grads, prroi = (np.asarray(a).reshape(6, *a.shape[-4:]) for a in jax.jit(run)(*args))
    for i, (x, r) in enumerate(pairs()):
        want = roipool.roi_align(x, r, SIZE, SCALE, 2, True)
        np.testing.assert_array_equal(bits(outs[i]), bits(want))
        np.testing.assert_array_equal(
            bits(grads[i]), bits(roipool.roi_align_backward(g, r, x.shape, SIZE, SCALE, 2, True))
        )
        np.testing.assert_array_equal(bits(prroi[i]), bits(roipool.prroi_pool(x, r, SIZE, SCALE)))


@pytest.mark.parametrize(
    "op, kwargs",
    [
        ("roi_align", {"sampling_ratio": 2, "aligned": True}),
        ("roi_align", {"sampling_ratio": -1, "aligned": False}),
        ("ps_roi_align", {"sampling_ratio": 2}),
        ("ps_roi_align", {"sampling_ratio": -1}),
    ],
)
def test_callback_box_gradient_is_the_numpy_kernels(op, kwargs):
    # the CPU box kernel (roipool.<op>_boxes_backward), not the XLA path: the same bits as NumPy,
    # and the XLA path's values to float rounding
    x, rois = cases_map(np.float32, seed=3), cases_rois(seed=4).astype(np.float32)
    channels = SHAPE[1] // (SIZE[0] * SIZE[1]) if op.startswith("ps_") else SHAPE[1]
    g = np.random.default_rng(5).standard_normal((rois.shape[0], channels, *SIZE)).astype(np.float32)

    def box_grad(backend):
        def run(x, r):
            _, vjp = jax.vjp(lambda r: getattr(rj, op)(x, r, SIZE, SCALE, **kwargs, backend=backend), r)
            return vjp(jnp.asarray(g))[0]

        return np.asarray(jax.jit(run)(x, rois))

    want = getattr(roipool, f"{op}_boxes_backward")(g, x, rois, SIZE, SCALE, *kwargs.values())
    assert np.abs(want[:, 1:]).max() > 0
    got = box_grad("callback")
    np.testing.assert_array_equal(bits(got), bits(want))
    np.testing.assert_allclose(box_grad("xla"), want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_check_grads_float64_input_and_boxes():
    with enable_x64(True):
        rng = np.random.default_rng(5)
        x = jnp.asarray(rng.standard_normal((1, 4, 5, 6)))
        # corners away from cell boundaries and a fixed grid: the samples move smoothly with the boxes
        coords = jnp.asarray([[1.3, 2.2, 17.1, 13.7], [-3.3, 4.1, 9.7, 19.4]])
        rois = jnp.concatenate([jnp.zeros((2, 1)), coords], axis=1)

        def boxes(c):  # the batch index is not a variable
            return jnp.concatenate([jnp.zeros((2, 1)), c], axis=1)

        # jitted: check_grads calls each function several times
        align = jax.jit(lambda x, c: rj.roi_align(x, boxes(c), 2, 0.25, 2, True, backend="xla"))
        align_cb = jax.jit(lambda x, c: rj.roi_align(x, boxes(c), 2, 0.25, 2, True, backend="callback"))
        ps_align = jax.jit(lambda x, c: rj.ps_roi_align(x, boxes(c), 1, 0.25, 2, backend="xla"))
        ps_align_cb = jax.jit(lambda x, c: rj.ps_roi_align(x, boxes(c), 1, 0.25, 2, backend="callback"))
        pool = jax.jit(lambda x: rj.roi_pool(x, rois, 2, 0.25, backend="xla"))
        check_grads(align, (x, coords), 1, modes=["rev"])
        check_grads(align_cb, (x, coords), 1, modes=["rev"])
        check_grads(ps_align, (x, coords), 1, modes=["rev"])
        check_grads(ps_align_cb, (x, coords), 1, modes=["rev"])
        distinct = jnp.asarray(rng.permutation(120).reshape(1, 4, 5, 6) / 7.0)  # no ties: the argmax is stable
        check_grads(pool, (distinct,), 1, modes=["rev"])


@pytest.mark.parametrize("op, half", [("roi_pool", "float16"), ("roi_align", "bfloat16")])
def test_16_bit_inputs_are_computed_in_float32(op, half):
    xh = jnp.asarray(cases_map(np.float32)).astype(half)
    rois = cases_rois()
    got = jax.jit(lambda x, r: getattr(rj, op)(x, r, SIZE, SCALE, backend="xla"))(xh, jnp.asarray(rois, np.float32))
    assert got.dtype == jnp.dtype(half)
    want = getattr(roipool, op)(np.asarray(xh.astype(jnp.float32)), rois, SIZE, SCALE)  # float32
    got = np.asarray(got.astype(jnp.float32))
    if op == "roi_pool":  # the maximum is one of the inputs: exact
        np.testing.assert_array_equal(got, want)
    else:  # float32 result rounded once to bfloat16 (8 bits)
        np.testing.assert_allclose(got, want, rtol=2**-8, atol=1e-6)


def test_empty_box_sets_and_box_lists():
    x = jnp.asarray(cases_map(np.float32))
    for boxes in (np.zeros((0, 5), np.float32), [np.zeros((0, 4)), np.zeros((0, 4))]):
        for op in ("roi_pool", "roi_align", "ps_roi_pool", "ps_roi_align"):
            out = getattr(rj, op)(x, boxes, SIZE, backend="xla")
            assert out.shape[0] == 0 and out.shape[2:] == SIZE
    rois = cases_rois()
    listed = [rois[rois[:, 0] == i, 1:] for i in range(2)]
    order = np.argsort(rois[:, 0], kind="stable")
    got = jax.jit(lambda x, b: rj.roi_pool(x, b, SIZE, SCALE, backend="xla"))(
        x, [jnp.asarray(b, np.float32) for b in listed]
    )
    np.testing.assert_array_equal(bits(got), bits(roipool.roi_pool(np.asarray(x), rois[order], SIZE, SCALE)))


@pytest.mark.parametrize("input, error, words", BAD_INPUTS)
def test_bad_input_gives_the_numpy_paths_errors(input, error, words):
    if isinstance(input, np.ndarray) and input.dtype.kind == "c":
        input = jnp.asarray(input)
    with pytest.raises(error, match=words.replace("a NumPy array", "a jax.Array")):
        rj.roi_pool(input, np.array([[0, 0, 0, 4, 4]]), 2)


@pytest.mark.parametrize("boxes, error, words", BAD_BOXES)
def test_bad_boxes_give_the_numpy_paths_errors(boxes, error, words):
    x = jnp.zeros((2, 4, 8, 8), jnp.float32)
    with pytest.raises(error, match=words):
        rj.roi_align(x, boxes, 2)


def test_static_argument_errors():
    x = jnp.zeros((2, 4, 8, 8), jnp.float32)
    rois = np.array([[0, 0, 0, 4, 4]])
    with pytest.raises(ValueError, match="output_size"):
        rj.roi_pool(x, rois, 0)
    with pytest.raises(ValueError, match="spatial_scale"):
        rj.roi_align(x, rois, 2, -1.0)
    with pytest.raises(TypeError, match="aligned"):
        rj.roi_align(x, rois, 2, 1.0, 2, 1)
    with pytest.raises(ValueError, match="not a multiple"):
        rj.ps_roi_pool(x, rois, 3)
    with pytest.raises(ValueError, match="overflows"):
        rj.roi_align(x, np.array([[0, 0, 0, 3e38, 1]], np.float32), 2, 4.0)
    with pytest.raises(ValueError, match="backend"):
        rj.roi_pool(x, rois, 2, backend="tpu")
    with pytest.raises(ValueError, match="backend"):
        rj.set_backend("fast")


@pytest.mark.parametrize("backend", ["xla", "callback"])
@pytest.mark.parametrize("case", list(OPS))
def test_nhwc_layout_gives_the_nchw_values_and_gradients(case, backend):
    """``layout="nhwc"``: an ``(N, H, W, C)`` map gives ``(K, PH, PW, C)`` results and an
    ``(N, H, W, C)`` gradient holding the NCHW call's values (bit for bit through the NumPy
    kernels; to rounding through XLA, which may order its sums by layout)."""
    x, rois = cases_map(np.float32), cases_rois(seed=2)
    out0 = getattr(roipool, op_name(case))(x, rois, SIZE, SCALE, **OPS[case])
    g = np.random.default_rng(3).standard_normal(out0.shape).astype(np.float32)
    fn = getattr(rj, op_name(case))
    results = {}
    for layout, xin, gin in [
        ("nchw", x, g),
        ("nhwc", x.transpose(0, 2, 3, 1).copy(), g.transpose(0, 2, 3, 1).copy()),
    ]:

        def f(xin, layout=layout):
            return fn(xin, jnp.asarray(rois, np.float32), SIZE, SCALE, backend=backend, layout=layout, **OPS[case])

        out, vjp = jax.vjp(f, jnp.asarray(xin))
        results[layout] = np.asarray(out), np.asarray(vjp(jnp.asarray(gin))[0])
    out, grad = results["nhwc"]
    assert out.shape == (out0.shape[0], *SIZE, out0.shape[1]) and grad.shape == (2, 9, 11, 8)
    want_out, want_grad = (a.transpose(0, 2, 3, 1) for a in results["nchw"])
    if backend == "callback" or case == "roi_pool":
        np.testing.assert_array_equal(bits(out), bits(want_out))
        np.testing.assert_array_equal(bits(grad), bits(want_grad))
    else:
        np.testing.assert_allclose(out, want_out, rtol=0, atol=1e-5 * max(np.abs(want_out).max(), 1))
        np.testing.assert_allclose(grad, want_grad, rtol=0, atol=1e-5 * max(np.abs(want_grad).max(), 1))


def test_layout_errors():
    x = jnp.zeros((2, 8, 8, 4), jnp.float32)
    rois = np.array([[0, 0, 0, 4, 4]])
    with pytest.raises(ValueError, match=r"layout must be one of 'nchw', 'nhwc', got 'NHWC\?'"):
        rj.roi_align(x, rois, 2, layout="NHWC?")
    with pytest.raises(ValueError, match=r"input must have 4 dimensions \(N, H, W, C\) with layout='nhwc'"):
        rj.roi_pool(x[0], rois, 2, layout="nhwc")
    with pytest.raises(ValueError, match="not a multiple"):  # C is the last axis: 4 is not a multiple of 3 x 3
        rj.ps_roi_pool(x, rois, 3, layout="nhwc")
    assert rj.roi_pool(x, rois, 2, layout="nhwc").shape == (1, 2, 2, 4)


def test_traced_invalid_batch_index_gives_nan_not_an_out_of_bounds_read():
    x = jnp.ones((2, 4, 8, 8), jnp.float32)
    rois = jnp.asarray([[0, 0, 0, 4, 4], [2, 0, 0, 4, 4], [-1, 0, 0, 4, 4], [0.5, 0, 0, 4, 4]], jnp.float32)
    for op in ("roi_pool", "ps_roi_align"):  # roi_align and ps_roi_pool apply the same box_is_valid mask
        out = jax.jit(lambda x, r, op=op: getattr(rj, op)(x, r, 2, backend="xla"))(x, rois)
        assert np.isfinite(out[0]).all() and np.isnan(out[1:]).all()


def test_importing_roipool_imports_no_framework():
    code = "import sys, roipool; assert 'jax' not in sys.modules and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    code = "import sys, roipool.jax; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
