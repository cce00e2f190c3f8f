"""Small calls after an idle wait, compared between two source trees in alternating processes.

Usage: ``python benchmarks/idle_calls.py OLD_SRC NEW_SRC [pairs] [rounds]`` (defaults 8 and 15),
for example with ``git worktree add /tmp/old <commit>`` and ``/tmp/old/src src``. Each of
``pairs`` pairs runs one process on ``OLD_SRC`` and then one on ``NEW_SRC`` (as ``PYTHONPATH``,
with this interpreter). A process times the `tiny` workload's ``roi_align`` and ``roi_pool``
forwards, NumPy (NCHW and ``layout="nhwc"``) and torch (contiguous and channels-last, under
``torch.no_grad`` as ``roipool bench`` calls them), one call after each wait until the process
has been idle for 20 ms (``roipool bench``'s default), ``rounds`` rounds rotating the calls,
on one torch thread. Prints each call's median over the pairs of its per-process medians (us)
and the median, minimum and maximum of new / old over the pairs: on a shared VM whose speed
drifts by a third within minutes, only ratios taken pair by pair mean much.

With ``--child`` (internal) it is one such process, printing its medians as JSON.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time


def child(rounds: int) -> None:
    import numpy as np
    import torch

    import roipool
    from roipool.bench import _quiesce
    from roipool.bench.workloads import WORKLOADS

    torch.set_num_threads(1)
    x, rois = WORKLOADS["tiny"].make()
    xn = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    xt, rt = torch.from_numpy(x), torch.from_numpy(rois)
    xtc = xt.contiguous(memory_format=torch.channels_last)

    def no_grad(call):
        def run():
            with torch.no_grad():
                return call()

        return run

    calls = {
        "numpy roi_align": lambda: roipool.roi_align(x, rois, 7, 1 / 8, 2, True),
        "numpy roi_pool": lambda: roipool.roi_pool(x, rois, 7, 1 / 8),
        "numpy roi_align nhwc": lambda: roipool.roi_align(xn, rois, 7, 1 / 8, 2, True, layout="nhwc"),
        "numpy roi_pool nhwc": lambda: roipool.roi_pool(xn, rois, 7, 1 / 8, layout="nhwc"),
        "torch roi_align": no_grad(lambda: roipool.roi_align(xt, rt, 7, 1 / 8, 2, True)),
        "torch roi_pool": no_grad(lambda: roipool.roi_pool(xt, rt, 7, 1 / 8)),
        "torch roi_align channels-last": no_grad(lambda: roipool.roi_align(xtc, rt, 7, 1 / 8, 2, True)),
        "torch roi_pool channels-last": no_grad(lambda: roipool.roi_pool(xtc, rt, 7, 1 / 8)),
    }
    for call in calls.values():
        call()
    names = list(calls)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            _quiesce()
            start = time.perf_counter_ns()
            calls[name]()
            times[name].append((time.perf_counter_ns() - start) / 1e3)
    print(json.dumps({name: statistics.median(t) for name, t in times.items()}))


def main(old: str, new: str, pairs: int = 8, rounds: int = 15) -> None:
    runs: dict[str, list[dict]] = {old: [], new: []}
    for _ in range(pairs):
        for tree in (old, new):
            env = dict(os.environ, PYTHONPATH=tree)
            result = subprocess.run(
                [sys.executable, __file__, "--child", str(rounds)], env=env, capture_output=True, text=True, check=True
            )
            runs[tree].append(json.loads(result.stdout.splitlines()[-1]))
    print(f"{pairs} pairs of processes, {rounds} rounds each; us, medians over the pairs")
    for name in runs[old][0]:
        before = [run[name] for run in runs[old]]
        after = [run[name] for run in runs[new]]
        ratios = [b / a for a, b in zip(before, after)]
        print(
            f"{name:30s} old {statistics.median(before):6.0f}  new {statistics.median(after):6.0f}"
            f"  new/old {statistics.median(ratios):.2f} ({min(ratios):.2f} to {max(ratios):.2f})"
        )


if __name__ == "__main__":
    if sys.argv[1] == "--child":
        child(int(sys.argv[2]))
    else:
        main(sys.argv[1], sys.argv[2], *(int(a) for a in sys.argv[3:5]))
