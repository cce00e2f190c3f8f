"""The L2 and L3 sizes the CPU reports, and what is chosen from them: the torch roi_pool training route,
roi_pool's NCHW tiles, the map-row sweep of the channels-last forwards (and its order, ``_parallel.row_sweep``)."""

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


def clear():
    _machine.l2_bytes.cache_clear()
    _machine.l3_bytes.cache_clear()


def test_row_sweep_orders_bin_rows_by_image_then_first_map_row_and_balances_the_runs():
    import numpy as np

    from roipool.cpu._parallel import row_sweep, whole_rois

    first_row = np.array([[5, 7], [0, 3], [5, 1], [2, 2]])  # (K=4 RoIs, PH=2 bin rows)
    batch = np.array([1, 1, 0, 0])
    cost = np.arange(8, dtype=np.float64).reshape(4, 2) + 1
    items, bounds = row_sweep(first_row, cost, batch, height=10)
    # image 0 first (RoIs 2, 3), by first row, ties in RoI order; then image 1
    want = [(2, 1), (3, 0), (3, 1), (2, 0), (1, 0), (1, 1), (0, 0), (0, 1)]
    assert [tuple(r) for r in items[:, :2]] == want
    assert (items[:, 2] == items[:, 1] + 1).all()
    assert bounds[0] == 0 and bounds[-1] == 8 and (np.diff(bounds) > 0).all()
    assert whole_rois(3, 7).tolist() == [[0, 0, 7], [1, 0, 7], [2, 0, 7]]
    # rows off the map sort as its first or last row (the sort's slots are indexed by key, unchecked)
    items, _ = row_sweep(np.array([[99], [-5], [9]]), np.ones((3, 1)), np.array([0, 0, 0]), height=10)
    assert items[:, 0].tolist() == [1, 0, 2]


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
