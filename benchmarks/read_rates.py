"""How fast this machine's threads read from each cache level: the rates behind the CPU floors.

Usage: ``PYTHONPATH=src python benchmarks/read_rates.py``. Every Numba thread
scans its own buffer front to back again and again (about 1 GiB per thread)
with ``roi_pool``'s own bin scan, eight running maxima in registers; the
buffer sizes per thread run from L1-sized to larger than the L3. Prints the
CPU, the thread count, and the total read rate per buffer size, medians of 5.
"""

from __future__ import annotations

import statistics
import time

import numba
import numpy as np

from roipool import bench
from roipool.cpu.roi_pool import _bin_max8

CHANNELS = 128  # one register block of float32: what _bin_max8 reads per cell


@numba.njit(parallel=True, nogil=True)
def _scan(buffers, passes, out):
    """Each thread: ``passes`` times over its buffer, front to back, with ``roi_pool``'s own bin
    scan (``_bin_max8``): the buffer is one bin row of 512-byte cells, 128 float32 channels each."""
    cells = buffers.shape[1] // CHANNELS
    for t in numba.prange(buffers.shape[0]):
        for _ in range(passes):
            _bin_max8(buffers[t], 0, cells, CHANNELS, 0, 1, 0, cells, out[t], 0)


def main() -> None:
    threads = numba.get_num_threads()
    print(f"cpu: {bench.machine()['cpu']}, threads {threads}")
    out = np.zeros((threads, CHANNELS), np.float32)
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
