"""What the JAX test files share; import it after ``pytest.importorskip("jax")``."""

from __future__ import annotations

import jax
import numpy as np
import pytest

try:
    enable_x64 = jax.enable_x64  # a context manager in jax >= 0.7
except AttributeError:  # pragma: no cover - older jax
    from jax.experimental import enable_x64


def take_callback(kind: str, monkeypatch) -> None:
    """Run the callback backend through ``kind``: ``"pure_callback"`` (as on a JAX without
    ``buffer_callback``, which is hidden for the test) or ``"buffer_callback"`` (skipped where
    this JAX has none)."""
    from roipool.jax import _ops

    if kind == "pure_callback":
        monkeypatch.setattr(_ops, "_buffer_callback", None)
    elif _ops._buffer_callback is None:
        pytest.skip("this JAX has no jax.experimental.buffer_callback")


def bits(a) -> np.ndarray:
    """``a``'s bits as unsigned integers of its width: equal bits, equal arrays (NaN included)."""
    a = np.asarray(a)
    return a.view(np.dtype(f"u{a.dtype.itemsize}"))


def assert_close(got, want, rtol: float) -> None:
    """``got`` has ``want``'s dtype and shape and is within ``rtol`` of its largest magnitude (at least 1)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=rtol * max(np.abs(want).max(initial=0), 1))


@pytest.fixture(name="dtype", params=["float32", "float64"])
def dtype_fixture(request):
    """``dtype``: float32, or float64 with ``jax_enable_x64`` on for the test (import this name to use it)."""
    if request.param == "float64":
        with enable_x64(True):
            yield np.float64
    else:
        yield np.float32
