"""The L2 size the CPU reports, which the torch roi_pool uses to pick its training route."""

from __future__ import annotations

import pytest

from roipool.cpu import _machine


@pytest.mark.parametrize("text, size", [("1024K\n", 1 << 20), ("2M", 2 << 20), ("65536", 65536), ("512k", 512 << 10)])
def test_parse_size_reads_the_sys_notation(text, size):
    assert _machine.parse_size(text) == size


def test_l2_bytes_reads_sys_or_falls_back_to_the_smaller_cache(monkeypatch, tmp_path):
    for index, (level, kind, size) in enumerate(
        [("1", "Data", "32K"), ("1", "Instruction", "32K"), ("2", "Unified", "1280K")]
    ):
        d = tmp_path / f"index{index}"
        d.mkdir()
        (d / "level").write_text(level + "\n")
        (d / "type").write_text(kind + "\n")
        (d / "size").write_text(size + "\n")
    monkeypatch.delenv("ROIPOOL_L2_BYTES", raising=False)
    monkeypatch.setattr(_machine, "_CACHE_DIR", str(tmp_path))
    _machine.l2_bytes.cache_clear()
    try:
        assert _machine.l2_bytes() == 1280 << 10
        _machine.l2_bytes.cache_clear()
        monkeypatch.setattr(_machine, "_CACHE_DIR", str(tmp_path / "missing"))
        assert _machine.l2_bytes() == _machine.FALLBACK_L2_BYTES == 512 << 10
        _machine.l2_bytes.cache_clear()
        monkeypatch.setenv("ROIPOOL_L2_BYTES", "3000000")
        assert _machine.l2_bytes() == 3_000_000
    finally:
        _machine.l2_bytes.cache_clear()
