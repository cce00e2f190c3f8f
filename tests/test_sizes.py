"""Sizes whose output (or tables) cannot fit in memory fail at once, naming the argument, before any work."""

import numpy as np
import pytest

import roipool

HUGE = (1, 10**9)  # a typo for (1, 10) or (10, 9): K x C x 10**9 outputs
MESSAGE = r"output_size=\(1, 1000000000\) asks for the output of shape \(16, 256, 1, 1000000000\)"


@pytest.fixture
def no_geometry(monkeypatch):
    """Make building any bin or tap table fail the test: the size check must come first."""
    from roipool.cpu import ps_roi, roi_align, roi_pool

    def built(*args, **kwargs):
        raise AssertionError("the geometry was built before the size check")

    monkeypatch.setattr(roi_pool, "roi_pool_bins", built)
    monkeypatch.setattr(roi_align, "roi_align_taps", built)
    monkeypatch.setattr(ps_roi, "ps_roi_pool_taps", built)
    monkeypatch.setattr(ps_roi, "ps_roi_align_taps", built)


def _boxes():
    return np.array([[0, 0, 0, 8, 8]] * 16, np.float32)


def test_numpy_output_too_large_for_memory_fails_first(no_geometry):
    x = np.zeros((1, 256, 16, 16), np.float32)
    for call in (
        lambda: roipool.roi_pool(x, _boxes(), HUGE),
        lambda: roipool.roi_pool_with_argmax(x, _boxes(), HUGE),
        lambda: roipool.roi_align(x, _boxes(), HUGE, 1.0, 2, True),
    ):
        with pytest.raises(ValueError, match=MESSAGE):
            call()
    # position-sensitive: 256 channels are no multiple of 10**9 bins, which is said first
    with pytest.raises(ValueError, match=r"output_size=\(1, 1000000000\)"):
        roipool.ps_roi_pool(x, _boxes(), HUGE)


def test_rotated_output_too_large_for_memory_fails_first(monkeypatch):
    # it ran into NumPy's MemoryError (or "Maximum allowed dimension exceeded") before
    from roipool.cpu import roi_align_rotated

    def built(*args, **kwargs):
        raise AssertionError("the frames were built before the size check")

    monkeypatch.setattr(roi_align_rotated.Frames, "__init__", built)
    x = np.zeros((1, 256, 16, 16), np.float32)
    boxes = np.array([[0, 8, 8, 4, 4, 0.5]] * 16, np.float32)
    with pytest.raises(ValueError, match=MESSAGE):
        roipool.roi_align_rotated(x, boxes, HUGE)
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError, match=MESSAGE):
        roipool.roi_align_rotated(torch.from_numpy(x), torch.from_numpy(boxes), HUGE)


def test_numpy_gradient_too_large_for_memory_fails_first(no_geometry):
    g = np.zeros((16, 256, 2, 2), np.float32)
    huge = (1, 256, 10**7, 10**7)
    with pytest.raises(ValueError, match=r"input_shape=\(1, 256, 10000000, 10000000\) asks for a gradient"):
        roipool.roi_align_backward(g, _boxes(), huge, 2)
    with pytest.raises(ValueError, match=r"input_shape=\(1, 256, 10000000, 10000000\)"):
        roipool.roi_pool_backward(g, np.zeros(g.shape, np.int32), _boxes(), huge)


def test_bin_tables_too_large_for_memory_fail_first_without_channels(no_geometry):
    # no output values at all (0 channels), but a bin table per RoI for 10**12 bin columns
    x = np.zeros((1, 0, 16, 16), np.float32)
    with pytest.raises(ValueError, match=r"output_size=\(1, 1000000000000\) asks for bin tables of shape"):
        roipool.roi_align(x, _boxes(), (1, 10**12), 1.0, 2, True)


def test_a_size_that_fits_still_runs():
    x = np.ones((1, 2, 4, 4), np.float32)
    assert roipool.roi_pool(x, _boxes()[:1], (3, 50)).shape == (1, 2, 3, 50)


def test_torch_output_too_large_for_memory_fails_first(no_geometry):
    torch = pytest.importorskip("torch")
    import roipool.nn

    x = torch.zeros((1, 256, 16, 16), requires_grad=True)
    boxes = torch.from_numpy(_boxes())
    for call in (
        lambda: roipool.roi_pool(x, boxes, HUGE),
        lambda: roipool.roi_align(x, boxes, HUGE),
        lambda: roipool.nn.RoIPool(HUGE, 1.0)(x, boxes),
        lambda: roipool.nn.RoIAlign(HUGE, 1.0, -1, aligned=True)(x, boxes),
    ):
        with pytest.raises(ValueError, match=MESSAGE):
            call()
    with pytest.raises(ValueError, match=r"output_size=\(1, 1000000000\)"):
        roipool.nn.PSRoIAlign(HUGE, 1.0, 2)(x, boxes)


@pytest.mark.parametrize("backend", ["xla", "callback"])
def test_jax_output_too_large_for_memory_fails_at_trace_time(backend):
    jax = pytest.importorskip("jax")
    import roipool.jax as rj

    x = jax.numpy.zeros((1, 256, 16, 16), jax.numpy.float32)
    rotated = np.array([[0, 4, 4, 8, 8, 0.5]] * 16, np.float32)
    cases = (
        (rj.roi_pool, _boxes(), ()),
        (rj.roi_align, _boxes(), (1.0, 2, True)),
        (rj.prroi_pool, _boxes(), ()),
        (rj.roi_align_rotated, rotated, (1.0, 2)),
    )
    for op, boxes, args in cases:

        def call(x, b, op=op, args=args):
            return op(x, b, HUGE, *args, backend=backend)

        for run in (call, jax.jit(call)):
            with pytest.raises(ValueError, match=MESSAGE):
                run(x, boxes)
