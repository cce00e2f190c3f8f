"""roipool.jax (XLA backend) against roipool's NumPy functions: parity counts for the closing note.

Random maps with ties (values rounded to halves, -0.0 next to 0.0) and random
boxes (past the map, inverted, a third half-way after scaling) plus the
adversarial ones of ``tests/test_jax.py``; float32 and float64; forward
values and input gradients. Prints, per op and dtype, how many values were
compared, how many are bit-identical, and the largest difference relative to
the largest magnitude.

    PYTHONPATH=src python benchmarks/parity_jax.py [seeds]
"""

from __future__ import annotations

import sys

import jax
import numpy as np

sys.path.insert(0, ".")
from tests import test_jax as t  # noqa: E402  (the test cases and oracles)


def main(seeds: int) -> None:
    with jax.enable_x64(True):
        for dtype in (np.float32, np.float64):
            for case in t.OPS:
                counts = {"out": [0, 0, 0.0], "grad": [0, 0, 0.0]}
                for seed in range(seeds):
                    x, rois = t.cases_map(dtype, seed), t.cases_rois(seed)
                    out0 = getattr(t.roipool, t.op_name(case))(x, rois, t.SIZE, t.SCALE, **t.OPS[case])
                    g = np.random.default_rng(seed + 100).standard_normal(out0.shape).astype(dtype)
                    want = t.numpy_forward_and_grad(case, x, rois, g)
                    got = t.jax_forward_and_grad(case, "xla")(x, rois.astype(dtype), g)
                    for name, w, a in zip(("out", "grad"), want, got, strict=True):
                        a = np.asarray(a)
                        c = counts[name]
                        c[0] += w.size
                        c[1] += int((t.bits(a) == t.bits(w)).sum())
                        c[2] = max(c[2], float(np.abs(a - w).max() / max(np.abs(w).max(), 1e-300)) if w.size else 0.0)
                for name, (n, same, err) in counts.items():
                    print(
                        f"{case:<18} {np.dtype(dtype).name:<8} {name:<5} {n:>8} compared {same:>8} bit-identical  max rel {err:.2e}",
                        flush=True,
                    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
