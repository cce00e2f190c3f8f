"""Small calls warm and after an idle wait: what ``roipool bench``'s wait before each call does to them.

Usage: ``PYTHONPATH=src python benchmarks/warm_calls.py [workload] [rounds]`` (defaults: ``tiny``, 9),
in the peer venv to include the peers. For ``roi_align`` and ``roi_pool``, forward and training
step, every candidate ``roipool bench`` times is timed both ways ``roipool bench`` can
(``bench.measure``): 20 calls back to back (``--calls 20``: warm, as inside a model's loop),
and one call after the bench's own wait until the process's threads have been idle for
20 ms (the default, ``bench._quiesce``), in rounds interleaving the candidates. Prints the
CPU and the medians in ms.
"""

from __future__ import annotations

import statistics
import sys

from roipool import bench
from roipool.bench.candidates import candidates

BACK_TO_BACK = 20


def main(workload: str = "tiny", rounds: int = 9) -> None:
    w = bench.WORKLOADS[workload]
    print(f"cpu: {bench.machine()['cpu']}")
    for op, mode in [(op, mode) for op in ("roi_align", "roi_pool") for mode in bench.MODES]:
        cands = candidates(w, op, mode)
        # the two timings of roipool bench: --calls BACK_TO_BACK, and its default
        warm = bench.measure(cands, rounds, warmup=BACK_TO_BACK, calls=BACK_TO_BACK)
        idle = bench.measure(cands, rounds)
        for c in cands:
            print(
                f"{workload} {op:10s} {mode:17s} {c.impl:30s} warm {statistics.median(warm[c.impl]):7.3f} ms"
                f"   after an idle wait {statistics.median(idle[c.impl]):7.3f} ms"
            )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tiny", int(sys.argv[2]) if len(sys.argv) > 2 else 9)
