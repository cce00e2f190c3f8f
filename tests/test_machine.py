"""The L2 and L3 sizes the CPU reports, and what is chosen from them: the torch roi_pool training route,
roi_pool's NCHW tiles, the map-row sweep of the channels-last forwards (its order, ``_parallel.row_sweep``, and
its strips, ``sweep_strip``)."""

from __future__ import annotations

import pytest

from roipool.cpu import _machine


@pytest.fixture(autouse=True)
def _forget_the_sizes(monkeypatch):
    """Clear the cached cache sizes after each test, whose ``ROIPOOL_L2_BYTES`` may have been read
    by a kernel's choice (a later test in the same process would otherwise see it: the torch
    roi_pool training route reads the L2 size)."""
    yield
    clear()


@pytest.mark.parametrize("text, size", [("1024K\n", 1 << 20), ("2M", 2 << 20), ("65536", 65536), ("512k", 512 << 10)])
def test_parse_size_reads_the_sys_notation(text, size):
    assert _machine.parse_size(text) == size


def test_l2_bytes_reads_sys_or_falls_back_to_the_smaller_cache(monkeypatch, tmp_path):
    for index, (level, kind, size) in enumerate(
        [("1", "Data", "32K"), ("1", "Instruction", "32K"), ("2", "Unified", "1280K"), ("3", "Unified", "36608K")]
    ):
        d = tmp_path / f"index{index}"
        d.mkdir()
        (d / "level").write_text(level + "\n")
        (d / "type").write_text(kind + "\n")
        (d / "size").write_text(size + "\n")
    monkeypatch.delenv("ROIPOOL_L2_BYTES", raising=False)
    monkeypatch.delenv("ROIPOOL_L3_BYTES", raising=False)
    monkeypatch.setattr(_machine, "_CACHE_DIR", str(tmp_path))
    clear()
    try:
        assert _machine.l2_bytes() == 1280 << 10
        assert _machine.l3_bytes() == 36608 << 10
        clear()
        monkeypatch.setattr(_machine, "_CACHE_DIR", str(tmp_path / "missing"))
        assert _machine.l2_bytes() == _machine.FALLBACK_L2_BYTES == 512 << 10
        assert _machine.l3_bytes() == _machine.FALLBACK_L3_BYTES == 16 << 20
        clear()
        monkeypatch.setenv("ROIPOOL_L2_BYTES", "3000000")
        monkeypatch.setenv("ROIPOOL_L3_BYTES", "7000000")
        assert (_machine.l2_bytes(), _machine.l3_bytes()) == (3_000_000, 7_000_000)
        assert _machine.sweeps_map_rows(1_750_001) and not _machine.sweeps_map_rows(1_750_000)  # a quarter
    finally:
        clear()


@pytest.mark.parametrize(
    "shared, l3",
    [
        (None, 491520 << 10),  # sharing not said: taken as reported
        ("0-1\n", 32 << 20),  # a 2-vCPU VM shown its host's 480 MiB: 16 MiB for each CPU
        ("0-7", 128 << 20),
        ("0-63", 491520 << 10),  # a socket's own L3, under 16 MiB per CPU: as reported
        ("0,2,4-5\n", 64 << 20),
        ("0-63 pinned to 0-1", 32 << 20),  # a container given 2 CPUs of the socket: 16 MiB for each
    ],
)
def test_l3_bytes_holds_an_l3_larger_than_any_cpu_has_to_16_mib_per_cpu_sharing_it(monkeypatch, tmp_path, shared, l3):
    d = tmp_path / "index3"
    d.mkdir()
    (d / "level").write_text("3\n")
    (d / "type").write_text("Unified\n")
    (d / "size").write_text("491520K\n")
    shared, _, pinned = (shared or "").partition(" pinned to ")
    affinity = _machine.cpus_in(pinned) if pinned else set(range(64))
    monkeypatch.setattr(_machine.os, "sched_getaffinity", lambda pid: affinity, raising=False)
    if shared:
        (d / "shared_cpu_list").write_text(shared)
    monkeypatch.delenv("ROIPOOL_L3_BYTES", raising=False)
    monkeypatch.setattr(_machine, "_CACHE_DIR", str(tmp_path))
    clear()
    assert _machine.l3_bytes() == l3
    assert _machine.sweeps_map_rows(56 << 20) == (l3 // 4 < 56 << 20)  # maskrcnn's 56 MB map
    monkeypatch.setenv("ROIPOOL_L3_BYTES", str(1 << 30))  # an override is taken as it is
    clear()
    assert _machine.l3_bytes() == 1 << 30


@pytest.mark.parametrize("text, count", [("0", 1), ("0-1\n", 2), ("0,2,4-7", 6), ("3-3", 1)])
def test_count_cpus_reads_the_sys_cpu_list(monkeypatch, text, count):
    assert len(_machine.cpus_in(text)) == count
    monkeypatch.setattr(_machine.os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert _machine.count_cpus(text) == count


@pytest.mark.parametrize(
    "affinity, count",
    [({0, 1}, 2), ({5, 6, 7, 40}, 3), ({40, 41}, 8), (OSError, 8), (AttributeError, 8)],
)
def test_count_cpus_counts_the_cpus_this_process_may_run_on(monkeypatch, affinity, count):
    """A container pinned to some CPUs of the 8 said to share a cache counts those; pinned to none
    of them (cpu0's cache, another socket's CPUs), or where the OS has no affinity, all 8."""
    if isinstance(affinity, set):
        monkeypatch.setattr(_machine.os, "sched_getaffinity", lambda pid: affinity, raising=False)
    elif affinity is OSError:

        def refused(pid):
            raise OSError("not allowed")

        monkeypatch.setattr(_machine.os, "sched_getaffinity", refused, raising=False)
    else:
        monkeypatch.delattr(_machine.os, "sched_getaffinity", raising=False)
    assert _machine.count_cpus("0-7\n") == count


def clear():
    _machine.l2_bytes.cache_clear()
    _machine.l3_bytes.cache_clear()


def test_row_sweep_orders_pieces_of_bin_rows_by_image_strip_and_first_map_row_and_balances_the_runs():
    import numpy as np

    from roipool.cpu._parallel import balanced_chunks, row_sweep

    first_row = np.array([[5, 7], [0, 3], [5, 1], [2, 2]])  # (K=4 RoIs, PH=2 bin rows)
    first_col = np.array([[0, 3], [1, 2], [0, 0], [4, 9]])  # (K, PW=2 bin columns)
    batch = np.array([1, 1, 0, 0])
    rows, cols = np.arange(8).reshape(4, 2), np.arange(8).reshape(4, 2)[::-1]  # a bin's cost: rows * cols + 1
    items, bounds = row_sweep(first_row, first_col, rows, cols, batch, 10, strip=10)
    # one strip: whole bin rows, image 0 first (RoIs 2, 3), by first row, ties in RoI order; then image 1
    want = [(2, 1), (3, 0), (3, 1), (2, 0), (1, 0), (1, 1), (0, 0), (0, 1)]
    assert [tuple(r) for r in items[:, :2]] == want
    assert (items[:, 2] == items[:, 1] + 1).all() and (items[:, 3] == 0).all() and (items[:, 4] == 2).all()
    assert bounds[0] == 0 and bounds[-1] == 8 and (np.diff(bounds) > 0).all()
    # strips of 3 columns: a bin row whose bins start in two strips is cut in two pieces (RoIs 0
    # and 3); each image goes strip by strip (RoI 3's columns 4 and 9 are in strips 1 and 3), each
    # strip down the rows
    items, bounds = row_sweep(first_row, first_col, rows, cols, batch, 10, strip=3)
    want = [
        (2, 1, 0, 2), (2, 0, 0, 2), (3, 0, 0, 1), (3, 1, 0, 1), (3, 0, 1, 2), (3, 1, 1, 2),  # image 0
        (1, 0, 0, 2), (1, 1, 0, 2), (0, 0, 0, 1), (0, 1, 0, 1), (0, 0, 1, 2), (0, 1, 1, 2),  # image 1
    ]  # fmt: skip
    assert [(k, ph, lo, hi) for k, ph, _, lo, hi in items.tolist()] == want
    # every bin exactly once, and the runs balance the pieces' costs (the sum of their bins')
    cost = [sum(rows[k, ph] * cols[k, pw] + 1 for pw in range(lo, hi)) for k, ph, _, lo, hi in items.tolist()]
    assert bounds.tolist() == balanced_chunks(np.array(cost, np.float64)).tolist()
    assert sorted((k, ph, pw) for k, ph, _, lo, hi in items.tolist() for pw in range(lo, hi)) == [
        (k, ph, pw) for k in range(4) for ph in range(2) for pw in range(2)
    ]
    assert bounds[0] == 0 and bounds[-1] == 12 and (np.diff(bounds) > 0).all()
    # rows off the map sort as its first or last, a column left of it as its first (the sort's slots
    # are indexed by key, unchecked)
    one = np.ones((3, 1))
    items, _ = row_sweep(np.array([[99], [-5], [9]]), np.array([[-7], [0], [0]]), one, one, np.zeros(3, int), 10, 4)
    assert items[:, 0].tolist() == [1, 0, 2]


def test_sweep_band_weights_each_bin_row_by_its_work():
    import numpy as np

    from roipool.cpu._parallel import sweep_band

    # bin rows reading 1 and 3 map rows, over 2 columns: work 2 and 6, so (1 * 2 + 3 * 6) / 8 rows
    assert sweep_band(np.array([[1, 3]]), np.array([[2]])) == 2.5
    assert sweep_band(np.array([[1, 3], [5, 5]]), np.array([[2], [0]])) == 2.5  # a RoI reading no columns weighs 0
    assert sweep_band(np.zeros((2, 3)), np.ones((2, 4))) == 0.0  # nothing read at all


@pytest.mark.parametrize(
    "l2, rows, cell_bytes, want",
    [
        (1 << 20, 7.2, 1024, 35),  # maskrcnn's roi_pool on this Cascade Lake: a quarter of 1 MiB
        (512 << 10, 7.2, 1024, 17),  # Zen 3's L2: half as wide
        (1 << 20, 3.1, 1024, 82),  # roi_align reads fewer rows per bin row
        (64 << 10, 7.2, 1024, 4),  # never fewer than 4 columns
        (1 << 20, 0.0, 1024, 256),  # no rows read (empty bins) counts as one
    ],
)
def test_sweep_strip_fills_a_quarter_of_the_l2(monkeypatch, l2, rows, cell_bytes, want):
    monkeypatch.setenv("ROIPOOL_L2_BYTES", str(l2))
    _machine.l2_bytes.cache_clear()
    assert _machine.sweep_strip(rows, cell_bytes) == want


@pytest.mark.parametrize(
    "l2, rows, channels, want",
    [
        (1 << 20, 196, 256, 256),  # maskrcnn's 14 x 14 bins: all 256 channels fit half of 1 MiB
        (512 << 10, 196, 256, 256),  # and half of Zen 3's 512 KiB (196 KiB of tile)
        (256 << 10, 196, 256, 128),  # a smaller L2 gets one block
        (64 << 10, 196, 256, 128),  # never less than one block
        (1 << 20, 49, 147, 256),  # whole blocks only: 147 channels round up to two
    ],
)
def test_tile_channels_fits_half_the_l2_in_whole_blocks(monkeypatch, l2, rows, channels, want):
    monkeypatch.setenv("ROIPOOL_L2_BYTES", str(l2))
    _machine.l2_bytes.cache_clear()
    try:
        assert _machine.tile_channels(rows, channels, 4, 128) == want
    finally:
        _machine.l2_bytes.cache_clear()


def test_roi_pool_gives_the_same_bits_whatever_the_l2(monkeypatch):
    """The NCHW forward pools as many channels per tile as half the L2 holds: 147 channels in
    one tile, or one 128-channel block at a time, must give the same values and argmax."""
    import numpy as np

    import roipool

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 147, 9, 11)).astype(np.float32)
    boxes = np.array([[0, 0, 0, 40, 30], [1, 8.5, 4, 80, 70], [0, -10, -5, 200, 150]], np.float32)
    results = []
    for l2 in (1 << 20, 1 << 10):
        monkeypatch.setenv("ROIPOOL_L2_BYTES", str(l2))
        _machine.l2_bytes.cache_clear()
        try:
            results.append(roipool.roi_pool_with_argmax(x, boxes, 7, 1 / 8) + (roipool.roi_pool(x, boxes, 7, 1 / 8),))
        finally:
            _machine.l2_bytes.cache_clear()
    for a, b in zip(*results):
        assert np.array_equal(a, b)
    # and the same as the channels-last path, which pools all channels of a bin in one pass
    assert np.array_equal(
        results[0][2],
        roipool.roi_pool(x.transpose(0, 2, 3, 1).copy(), boxes, 7, 1 / 8, layout="nhwc").transpose(0, 3, 1, 2),
    )


@pytest.mark.parametrize(
    "l2, l3, height, width, cell_bytes, threads, want",
    [
        (1 << 20, 36 << 20, 200, 272, 512, 2, 33),  # maskrcnn's 28 MB scratch: 4.5 MiB bands
        (512 << 10, 32 << 20, 200, 272, 512, 2, 30),  # Zen 3's L3 of 32 MiB: 4 MiB
        (1 << 20, 36 << 20, 200, 272, 512, 16, 7),  # more threads, smaller shares, but at least the L2
        (1 << 20, 36 << 20, 38, 50, 512, 2, 38),  # vgg16's 1 MB: the whole map (under a quarter of L3)
        (1 << 20, 6_553_600, 40, 20, 2048, 2, 40),  # 1.6 MB: exactly a quarter of the L3
        (1 << 20, 6_553_596, 40, 20, 2048, 2, 25),  # a byte more: bands of the L2 (25 rows of 40 KiB)
        (1 << 10, 64, 21, 26, 512, 2, 1),  # never under one row
    ],
)
def test_scratch_band_is_the_whole_map_unless_its_scratch_is_large(
    monkeypatch, l2, l3, height, width, cell_bytes, threads, want
):
    monkeypatch.setenv("ROIPOOL_L2_BYTES", str(l2))
    monkeypatch.setenv("ROIPOOL_L3_BYTES", str(l3))
    clear()
    assert _machine.scratch_band(height, width, cell_bytes, threads) == want


@pytest.mark.parametrize(
    "features, wide",
    [("+avx2,+fma,+avx512f,+avx512bw", True), ("+avx2,+fma,-avx512f,-avx512bw", False), ("", False)],
)
def test_avx512_reads_the_features_numba_compiles_for(monkeypatch, features, wide):
    from numba.core import config

    monkeypatch.setattr(config, "CPU_FEATURES", features)
    _machine.avx512.cache_clear()
    try:
        assert _machine.avx512() is wide
    finally:
        _machine.avx512.cache_clear()
