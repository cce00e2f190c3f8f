"""A jitted ``roipool.jax.roi_align`` step asking for both gradients (map and boxes), callback backend
(``ps_roi_align`` on a position-sensitive workload, such as ``rfcn``).

Usage: ``python benchmarks/jax_box_gradient.py [rounds] [workload,...] SRC [SRC ...]``
(defaults: 3 rounds; ``tiny,small-batch,maskrcnn``). Each ``SRC`` is a
checkout's ``src`` folder (``git archive <rev> src | tar -x -C /tmp/old``
gives an older one), run in its own process, one after the other. For each
workload it prints the first call (tracing, compiling, running) and the median
of ``rounds`` calls after an idle wait, and how far the box gradient is from
``roipool.roi_align_boxes_backward`` (the NumPy function; ``ps_roi_align_boxes_backward``),
relative to its largest magnitude, where the checkout has that function.
"""

from __future__ import annotations

import os
import subprocess
import sys


def run(names: list[str], rounds: int) -> None:
    import statistics
    import time

    import jax
    import jax.numpy as jnp
    import numpy as np

    import roipool
    import roipool.jax as rj
    from roipool import bench
    from roipool.bench.candidates import Candidate
    from roipool.bench.workloads import WORKLOADS

    for name in names:
        w = WORKLOADS[name]
        x, rois = w.make()
        op = "ps_roi_align" if w.position_sensitive else "roi_align"
        args = (w.output_size, w.spatial_scale, w.sampling_ratio) + (() if w.position_sensitive else (w.aligned,))
        g = np.random.default_rng(1).standard_normal(getattr(roipool, op)(x, rois, *args).shape, np.float32)

        pool = getattr(rj, op)

        def grads(x, r, g, args=args, pool=pool):
            _, vjp = jax.vjp(lambda x, r: pool(x, r, *args, backend="callback"), x, r)
            return vjp(g)

        step = jax.jit(grads)
        xj, rj_, gj = jnp.asarray(x), jnp.asarray(rois), jnp.asarray(g)
        began = time.perf_counter()
        _, box_grad = jax.block_until_ready(step(xj, rj_, gj))
        first = time.perf_counter() - began
        candidate = Candidate(name, lambda a=(xj, rj_, gj), step=step: jax.block_until_ready(step(*a)))
        (times,) = bench.measure([candidate], rounds, warmup=0).values()
        boxes_backward = getattr(roipool, f"{op}_boxes_backward", None)  # older checkouts: no ps_roi_align one
        if boxes_backward is None:
            off = "(no NumPy function to compare with)"
        else:
            want = boxes_backward(g, x, rois, *args)
            off = f"{np.abs(np.asarray(box_grad) - want).max() / max(np.abs(want).max(), 1.0):.1e}"
        print(
            f"{name:12s} {op} first call {first:6.2f} s, median {statistics.median(times):9.1f} ms;"
            f" box gradient off NumPy's by {off}",
            flush=True,
        )


def main() -> None:
    argv = sys.argv[1:]
    if argv and argv[0] == "--child":
        run(argv[1].split(","), int(argv[2]))
        return
    rounds = int(argv.pop(0)) if argv and argv[0].isdigit() else 3
    names = argv.pop(0) if argv and not os.path.isdir(argv[0]) else "tiny,small-batch,maskrcnn"
    for src in argv:
        print(f"# {src}", flush=True)
        env = dict(os.environ, PYTHONPATH=src)
        subprocess.run([sys.executable, __file__, "--child", names, str(rounds)], env=env, check=True)


if __name__ == "__main__":
    main()
