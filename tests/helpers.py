"""Helpers shared by the tests: random boxes, calls from many Python threads, where Triton tests run."""

from __future__ import annotations

import os
import threading

import numpy as np


def random_rois(rng, k, n, height, width, scale, spread=1.5):
    """Boxes in image coordinates, some reaching past the map and some inverted."""
    img_h, img_w = height / scale, width / scale
    x = rng.uniform(-spread * 0.3 * img_w, spread * img_w, (k, 2))
    y = rng.uniform(-spread * 0.3 * img_h, spread * img_h, (k, 2))
    batch = rng.integers(0, n, k)
    return np.column_stack([batch, x[:, 0], y[:, 0], x[:, 1], y[:, 1]])


def run_in_threads(call, count):
    """Run ``call(i)`` for ``i in range(count)``, each in its own thread, all at once.

    Returns ``(results, errors)``: ``results[i]`` is what ``call(i)`` returned
    (None if it raised), ``errors`` every exception raised; the caller asserts on both.
    """
    results, errors = [None] * count, []

    def work(i):
        try:
            results[i] = call(i)
        except Exception as exc:  # pragma: no cover - reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, errors


def triton_device(torch) -> str:
    """Where a Triton test module runs: ``"cuda"`` on a GPU without the interpreter, ``"cpu"``
    under ``TRITON_INTERPRET=1``; otherwise the calling module is skipped."""
    import pytest

    interpret = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    if torch.cuda.is_available() and not interpret:
        return "cuda"
    if interpret:
        return "cpu"
    pytest.skip("no GPU and TRITON_INTERPRET is not set", allow_module_level=True)
