"""How fast this machine's threads read from each cache level: the rates behind the CPU floors.

Usage: ``PYTHONPATH=src python benchmarks/read_rates.py``. Every Numba thread
scans its own buffer front to back again and again (about 1 GiB per thread),
keeping eight running maxima in registers with ``_simd.vmax``, as
``roi_pool``'s forward scans a bin's cells; the buffer sizes per thread run
from L1-sized to larger than the L3. Prints the CPU, the thread count, and
the total read rate per buffer size, medians of 5.
"""

from __future__ import annotations

import statistics
import time

import numba
import numpy as np

from roipool import bench
from roipool.cpu._simd import VECTOR_BYTES, vload, vmax, vstore


@numba.njit(parallel=True, nogil=True)
def _scan(buffers, passes, out):
    """Each thread: ``passes`` times over its buffer, front to back, 8 vectors (512 bytes) at a time."""
    lanes = VECTOR_BYTES // buffers.itemsize
    size = buffers.shape[1]
    for t in numba.prange(buffers.shape[0]):
        b = buffers[t]
        a0, a1, a2, a3 = vload(b, 0), vload(b, lanes), vload(b, 2 * lanes), vload(b, 3 * lanes)
        a4, a5, a6, a7 = vload(b, 4 * lanes), vload(b, 5 * lanes), vload(b, 6 * lanes), vload(b, 7 * lanes)
        for _ in range(passes):
            for o in range(0, size, 8 * lanes):
                a0 = vmax(a0, vload(b, o))
                a1 = vmax(a1, vload(b, o + lanes))
                a2 = vmax(a2, vload(b, o + 2 * lanes))
                a3 = vmax(a3, vload(b, o + 3 * lanes))
                a4 = vmax(a4, vload(b, o + 4 * lanes))
                a5 = vmax(a5, vload(b, o + 5 * lanes))
                a6 = vmax(a6, vload(b, o + 6 * lanes))
                a7 = vmax(a7, vload(b, o + 7 * lanes))
        for i, a in enumerate((a0, a1, a2, a3, a4, a5, a6, a7)):
            vstore(out[t], i * lanes, a)


def main() -> None:
    threads = numba.get_num_threads()
    print(f"cpu: {bench.machine()['cpu']}, threads {threads}")
    out = np.zeros((threads, 8 * VECTOR_BYTES // 4), np.float32)
    for kib in (16, 128, 512, 768, 2048, 8192, 32768, 65536):
        buffers = np.random.default_rng(0).random((threads, kib * 1024 // 4), dtype=np.float32)
        passes = max(1, (1 << 30) // buffers[0].nbytes)
        _scan(buffers, 1, out)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            _scan(buffers, passes, out)
            times.append(time.perf_counter() - start)
        read = threads * passes * buffers[0].nbytes
        print(f"{kib:6d} KiB per thread: {read / statistics.median(times) / 1e9:6.1f} GB/s")


if __name__ == "__main__":
    main()
