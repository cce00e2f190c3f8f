"""What the CPU reports about itself, for choices that depend on it rather than on constants.

The development machines differ in their caches (Intel VMs here report
1 or 2 MiB of L2 per core; AMD Zen 3 has 512 KiB), so a working set that fits
one may spill on the other. :func:`l2_bytes` reads the L2 size per core from
Linux's ``/sys`` once per process; where it cannot be read it assumes the
smaller of the two, so a choice made from it errs towards the smaller cache.
``ROIPOOL_L2_BYTES`` overrides it (tests, or a machine that misreports);
:func:`l3_bytes` and ``ROIPOOL_L3_BYTES`` likewise for the L3, which is also held
to :data:`MAX_L3_BYTES_PER_CPU` for each CPU said to share it that the process may run
on (a VM may report its host's whole L3, a container its socket's). :func:`avx512` says whether the kernels are compiled for AVX-512, and
:func:`half_conversions` whether they convert float16 in hardware.
"""

from __future__ import annotations

import functools
import os

#: Assumed L2 per core when the machine does not say: AMD Zen 3's, the smallest we tune for.
FALLBACK_L2_BYTES = 512 * 1024
#: Assumed L3 when the machine does not say: between a client CPU's 8-12 MiB and Zen 3's 32 MiB.
FALLBACK_L3_BYTES = 16 << 20
#: The most L3 per CPU sharing it that :func:`l3_bytes` believes: more than any x86 part has
#: (AMD's stacked-cache parts have 12 MiB per core; Xeons 2 to 5). A 2-vCPU Intel VM here
#: reports 480 MiB shared by its 2 CPUs, its host's whole L3, which other guests share; taken
#: at its word it turned off the map-row sweep and ``maskrcnn``'s channels-last ``roi_pool``
#: took 37 ms instead of 19 (``docs/benchmarks.md``, "Intel Xeon with AMX").
MAX_L3_BYTES_PER_CPU = 16 << 20

_CACHE_DIR = "/sys/devices/system/cpu/cpu0/cache"


def parse_size(text: str) -> int:
    """Bytes in a ``/sys`` cache size such as ``"1024K"``, ``"2M"`` or ``"65536"``."""
    text = text.strip().upper()
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    return int(text.rstrip("KMG")) * scale


def cpus_in(text: str) -> set[int]:
    """The CPUs of a ``/sys`` CPU list such as ``"0-1"``, ``"0,2,4-7"`` or ``"3"``."""
    cpus = set()
    for part in text.strip().split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def count_cpus(text: str) -> int:
    """How many CPUs of the ``/sys`` CPU list ``text`` this process may run on (its affinity,
    ``os.sched_getaffinity``, where the OS has one and it meets the list), else how many it names.

    A container or a batch job pinned to a few CPUs of a large socket still sees the socket's
    whole L3 listed as shared by all of its CPUs; the others run someone else's work.
    """
    cpus = cpus_in(text)
    try:
        mine = cpus & os.sched_getaffinity(0)
    except (AttributeError, OSError):  # no affinity on this OS
        mine = set()
    return len(mine or cpus)


def _sys_cache(level: int) -> tuple[int, int | None] | None:
    """Size of cpu0's level-``level`` data (or unified) cache from ``/sys``, and how many CPUs
    share it (None where that is not said); None if the size is unreadable."""
    try:
        for entry in sorted(os.listdir(_CACHE_DIR)):
            path = os.path.join(_CACHE_DIR, entry)
            if not entry.startswith("index"):
                continue
            with open(os.path.join(path, "level")) as lvl, open(os.path.join(path, "type")) as kind:
                if lvl.read().strip() != str(level) or kind.read().strip() not in ("Unified", "Data"):
                    continue
            with open(os.path.join(path, "size")) as size:
                nbytes = parse_size(size.read())
            try:
                with open(os.path.join(path, "shared_cpu_list")) as shared:
                    return nbytes, count_cpus(shared.read())
            except (OSError, ValueError):
                return nbytes, None
    except (OSError, ValueError):
        pass
    return None


@functools.cache
def l2_bytes() -> int:
    """L2 cache per core in bytes: ``ROIPOOL_L2_BYTES``, else ``/sys``, else :data:`FALLBACK_L2_BYTES`."""
    if os.environ.get("ROIPOOL_L2_BYTES"):
        return int(os.environ["ROIPOOL_L2_BYTES"])
    found = _sys_cache(2)
    return found[0] if found and found[0] else FALLBACK_L2_BYTES


@functools.cache
def l3_bytes() -> int:
    """L3 cache in bytes as cpu0 sees it: ``ROIPOOL_L3_BYTES``, else what ``/sys`` reports, at most
    :data:`MAX_L3_BYTES_PER_CPU` for each CPU it says share it that this process may run on
    (:func:`count_cpus`), else :data:`FALLBACK_L3_BYTES`."""
    if os.environ.get("ROIPOOL_L3_BYTES"):
        return int(os.environ["ROIPOOL_L3_BYTES"])
    found = _sys_cache(3)
    if not found or not found[0]:
        return FALLBACK_L3_BYTES
    nbytes, sharing = found
    return nbytes if sharing is None else min(nbytes, MAX_L3_BYTES_PER_CPU * max(sharing, 1))


def sweeps_map_rows(map_bytes: int) -> bool:
    """Whether a forward sweeps down the map (``_parallel.row_sweep``: pieces of bin rows in
    map-row order, strip by strip) rather than going RoI by RoI: when one image's map,
    ``map_bytes``, is larger than a quarter of the L3.
    (The channels-last forwards of ``roi_align``, ``prroi_pool`` and ``roi_pool``, and
    ``roi_pool``'s NCHW forwards, ask.)

    Measured on Cascade Lake (36 MiB of L3): the sweep took the ``roi_align``
    channels-last kernel from 35 to 24 ms on a 53 MB map, 19 to 17 on 13 MB,
    35 to 34 on 15 MB (``vgg16``'s boxes on a map twice its size), but from
    26 to 28 on ``vgg16``'s 4 MB map, where a RoI's cells stay in cache anyway
    and the sweep's smaller pieces of work cost more than it saves.
    """
    return map_bytes > l3_bytes() // 4


def sweep_strip(rows: float, cell_bytes: int) -> int:
    """Map columns per strip of the map-row sweep (``_parallel.row_sweep``), at least 4: a band
    of ``rows`` map rows (about what a bin row reads, weighted by its work; at least one) of
    ``cell_bytes`` per cell that fills a quarter of :func:`l2_bytes`. The rest of the L2 holds
    the rows the sweep moves on to, and the output lines being written.

    Measured on Cascade Lake (1 MiB of L2) with ``maskrcnn``'s ``roi_pool``, whose bin rows read
    7.2 rows of 1 KiB cells (weighted): the channels-last kernel took 43 ms with whole bin rows,
    30 with strips of 16 columns, 29 with 32, 30 with 64 and 34 with 128 (the rule gives 35).
    """
    return max(4, int(l2_bytes() // 4 // (max(rows, 1.0) * max(cell_bytes, 1))))


def tile_channels(rows: int, channels: int, itemsize: int, block: int) -> int:
    """Channels of a ``(rows, channels)`` tile a kernel keeps in L2: a multiple of ``block``, at least one block.

    As many as fit half of :func:`l2_bytes` (the other half holds the map's
    cells being read and the output lines being written), and no more than
    ``channels`` needs.
    """
    fit = l2_bytes() // 2 // max(rows * itemsize, 1) // block * block
    return max(block, min(fit, -(-channels // block) * block))


def scratch_band(height: int, width: int, cell_bytes: int, threads: int) -> int:
    """Map rows per band of a backward task, whose scratch holds ``cell_bytes`` per cell: all
    ``height`` rows, unless the whole map's scratch is larger than a quarter of :func:`l3_bytes`
    (as :func:`sweeps_map_rows` asks of the map); then as many whole rows (at least one) as fill
    an equal share of a quarter of the L3 for each of ``threads`` tasks, and no less than
    :func:`l2_bytes`, so that the scattered sums stay in cache.

    Measured on Cascade Lake (1 MiB of L2, 36 MiB of L3, 2 threads) with ``maskrcnn``'s
    ``roi_align`` backward, whose whole-map scratch is 28 MB per 128 channels (the rule gives
    33 rows of 272 cells of 512 bytes): from an NCHW gradient, 73-75 ms with the whole map,
    84, 66, 60-61, 67 and 73 with bands of 7, 14, 28, 56 and 112 rows; from a channels-last one,
    about 52 with 28 rows and with 45 x 45-cell tiles of 1 MiB (62-71 with the whole map).
    """
    if height * width * cell_bytes <= l3_bytes() // 4:
        return max(height, 1)
    budget = max(l3_bytes() // 4 // max(threads, 1), l2_bytes())
    return max(1, min(height, budget // max(width * cell_bytes, 1)))


@functools.cache
def avx512() -> bool:
    """Whether Numba compiles the kernels for AVX-512: ``+avx512f`` in ``NUMBA_CPU_FEATURES``
    where set, else in the host's features as Numba reads them (a hypervisor may hide AVX-512
    from a CPU that has it; this says what the compiled code uses)."""
    return "+avx512f" in _compiled_features()


def _compiled_features() -> list[str]:
    """The CPU features Numba compiles for: ``NUMBA_CPU_FEATURES`` where set, else the host's."""
    from numba.core import codegen, config

    features = config.CPU_FEATURES if config.CPU_FEATURES is not None else codegen.get_host_cpu_features()
    return features.split(",")


@functools.cache
def half_conversions() -> bool:
    """Whether the compiled code converts float16 in hardware: F16C on x86 (every AVX2 CPU has
    it), or an AArch64 CPU (always). Without it LLVM calls a runtime function for the conversion,
    which Numba does not link, so float16 maps are then widened outside the kernels."""
    import platform

    return platform.machine().lower() in ("aarch64", "arm64") or "+f16c" in _compiled_features()


def features_without_avx512() -> str:
    """The host's features as Numba reads them, with AVX-512 (and AMX, AVX10) turned off: the
    ``NUMBA_CPU_FEATURES`` that compiles the AVX2 code on an AVX-512 machine, so that both can be
    compared there (``tests/test_isa.py``, ``benchmarks/parity_isa.py``)."""
    from numba.core import codegen

    wide = ("avx512", "amx", "avx10", "evex512")
    flags = [f for f in codegen.get_host_cpu_features().split(",") if f]
    return ",".join("-" + f[1:] if f[1:].startswith(wide) else f for f in flags)
