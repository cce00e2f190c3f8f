"""Every public NumPy op compiled for AVX2 against the same compiled for AVX-512: are the bits equal?

Usage, on a machine whose CPU runs AVX-512: ``PYTHONPATH=src python benchmarks/parity_isa.py``.
A child process compiles the kernels for this CPU with AVX-512 (and AMX) turned off
(``NUMBA_CPU_FEATURES``, its own empty ``NUMBA_CACHE_DIR``) and computes every op, forward and
backward, both layouts, float32 and float64, on random cases; this process computes them with
the kernels compiled for the CPU as it is, and the two are compared bit for bit (NaN equal to
NaN). Prints how many outputs differ and by how much. The child compiles everything: about
100 s. ``tests/test_isa.py`` checks ``roi_align`` and ``roi_pool`` the same way in CI.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import numpy as np

import roipool
from roipool.cpu import _machine


def nhwc(a):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def run() -> dict:
    """Every op's outputs on three random cases per dtype and layout, by name."""
    out = {}
    for dtype in (np.float32, np.float64):
        for seed in range(3):
            rng = np.random.default_rng(seed)
            channels = [150, 18 * 9, 70][seed]  # a 128-channel block and a tail; 18 per bin of 3x3; one narrow block
            x = rng.standard_normal((2, channels, 21, 27)).astype(dtype)
            k = 30
            b = np.concatenate([rng.integers(0, 2, (k, 1)), rng.uniform(-20, 230, (k, 4))], 1)
            b[:, 3:] = np.maximum(b[:, 3:], b[:, 1:3])
            b = b.astype(dtype)
            sizes = np.concatenate([rng.uniform(0, 200, (k, 2)), rng.uniform(1, 120, (k, 2))], 1)
            r = np.concatenate([b[:, :1], sizes, rng.uniform(-3, 3, (k, 1))], 1).astype(dtype)
            for layout in ("nchw", "nhwc"):
                xi = x if layout == "nchw" else nhwc(x)
                kw = {"layout": layout}
                tag = f"{dtype.__name__}-{seed}-{layout}"
                out[f"roi_pool-{tag}"] = roipool.roi_pool(xi, b, 5, 0.125, **kw)
                y, argmax = roipool.roi_pool_with_argmax(xi, b, 5, 0.125, **kw)
                ones = np.ones_like(y)
                out[f"roi_pool_bw-{tag}"] = roipool.roi_pool_backward(ones, argmax, b, xi.shape, **kw)
                out[f"roi_pool_bw_rescan-{tag}"] = roipool.roi_pool_backward(
                    ones, None, b, xi.shape, input=xi, spatial_scale=0.125, **kw
                )
                for sr in (1, 2, -1):
                    y = out[f"roi_align{sr}-{tag}"] = roipool.roi_align(xi, b, 5, 0.125, sr, True, **kw)
                    g = np.random.default_rng(9).standard_normal(y.shape).astype(dtype)
                    out[f"roi_align_bw{sr}-{tag}"] = roipool.roi_align_backward(
                        g, b, xi.shape, 5, 0.125, sr, True, **kw
                    )
                    out[f"roi_align_bbw{sr}-{tag}"] = roipool.roi_align_boxes_backward(
                        g, xi, b, 5, 0.125, sr, True, **kw
                    )
                    y = out[f"rot{sr}-{tag}"] = roipool.roi_align_rotated(xi, r, 4, 0.125, sr, True, **kw)
                    out[f"rot_bw{sr}-{tag}"] = roipool.roi_align_rotated_backward(
                        np.ones_like(y), r, xi.shape, 4, 0.125, sr, True, **kw
                    )
                y = out[f"prroi-{tag}"] = roipool.prroi_pool(xi, b, 5, 0.125, **kw)
                g = np.random.default_rng(8).standard_normal(y.shape).astype(dtype)
                out[f"prroi_bw-{tag}"] = roipool.prroi_pool_backward(g, b, xi.shape, 5, 0.125, **kw)
                out[f"prroi_bbw-{tag}"] = roipool.prroi_pool_boxes_backward(g, xi, b, 5, 0.125, **kw)
                if seed == 1:
                    y = out[f"ps_pool-{tag}"] = roipool.ps_roi_pool(xi, b, 3, 0.125, **kw)
                    out[f"ps_pool_bw-{tag}"] = roipool.ps_roi_pool_backward(
                        np.ones_like(y), b, xi.shape, 3, 0.125, **kw
                    )
                    for sr in (2, -1):
                        y = out[f"ps_align{sr}-{tag}"] = roipool.ps_roi_align(xi, b, 3, 0.125, sr, **kw)
                        g = np.random.default_rng(7).standard_normal(y.shape).astype(dtype)
                        out[f"ps_align_bw{sr}-{tag}"] = roipool.ps_roi_align_backward(
                            g, b, xi.shape, 3, 0.125, sr, **kw
                        )
                        out[f"ps_align_bbw{sr}-{tag}"] = roipool.ps_roi_align_boxes_backward(
                            g, xi, b, 3, 0.125, sr, **kw
                        )
    return out


def main() -> None:
    if len(sys.argv) > 1:  # the child: save the outputs
        np.savez(sys.argv[1], avx512=_machine.avx512(), **run())
        return
    if not _machine.avx512():
        sys.exit("this CPU does not run AVX-512 code: nothing to compare the AVX2 kernels with")
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(
            os.environ,
            NUMBA_CPU_FEATURES=_machine.features_without_avx512(),
            NUMBA_CACHE_DIR=os.path.join(tmp, "cache"),
        )
        src = os.path.dirname(os.path.dirname(roipool.__file__))
        env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
        saved = os.path.join(tmp, "avx2.npz")
        subprocess.run([sys.executable, __file__, saved], env=env, check=True)
        with np.load(saved) as avx2:
            assert not avx2["avx512"]
            other = {k: avx2[k] for k in avx2.files if k != "avx512"}
    here = run()
    differ = [k for k in here if not np.array_equal(here[k], other[k], equal_nan=True)]
    print(f"cpu: {_machine_name()}; {len(here)} outputs compared, {len(differ)} differ")
    for k in differ:
        scale = max(float(np.abs(here[k]).max()), 1e-300)
        print(f"  {k}: largest difference {float(np.abs(here[k] - other[k]).max()) / scale:.2e} of the largest value")


def _machine_name() -> str:
    from roipool import bench

    return bench.machine()["cpu"]


if __name__ == "__main__":
    main()
