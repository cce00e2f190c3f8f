"""Numba's on-disk cache follows changes to helper modules, not only to the kernel's own file."""

import os
import shutil
import subprocess
import sys

import roipool

SOURCE = os.path.dirname(roipool.__file__)

# ps_roi_pool_taps (cpu/ps_geometry.py) inlines rounded_box and round_half_away
# from another file, cpu/geometry.py: a corner at 0.5 rounds away from zero to 1.
PROBE = """
import numpy as np
from roipool.cpu.ps_geometry import ps_roi_pool_taps
rois = np.array([[0.0, 0.5, 0.5, 3.0, 3.0]])
taps = ps_roi_pool_taps(rois, np.float64(1.0), 1, 1, 8, 8)
print(int(taps[1][0, 0]), sum(ps_roi_pool_taps.stats.cache_hits.values()))
"""


def _probe(root, cache):
    env = dict(os.environ, PYTHONPATH=str(root), NUMBA_CACHE_DIR=str(cache))
    result = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    first_row, hits = map(int, result.stdout.split())
    return first_row, hits


def test_changing_a_helper_module_invalidates_the_cached_kernels(tmp_path):
    root = tmp_path / "src"
    shutil.copytree(SOURCE, root / "roipool", ignore=shutil.ignore_patterns("__pycache__"))
    cache = tmp_path / "numba-cache"
    assert _probe(root, cache) == (1, 0)  # compiled and written to the cache
    assert _probe(root, cache) == (1, 1)  # loaded from the cache: caching is on
    geometry = root / "roipool" / "cpu" / "geometry.py"
    text = geometry.read_text()
    assert "if abs(v) - a >= 0.5:" in text
    geometry.write_text(text.replace("if abs(v) - a >= 0.5:", "if abs(v) - a > 0.5:"))  # halves now round down
    assert _probe(root, cache) == (0, 0)  # the helper's change is compiled in, not the stale cache used


# A kernel Numba cannot cache (here: it asks for the thread count, a dynamic global) only
# earns Numba's warning, which names the kernel's file through the locator.
UNCACHEABLE = """
import warnings
import roipool.cpu._tiles as tiles
source = "import numba\\n@numba.njit(cache=True)\\ndef threads():\\n    return numba.get_num_threads()\\n"
space = {}
exec(compile(source, tiles.__file__, "exec"), space)  # as if defined in cpu/_tiles.py
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    print(space["threads"](), [str(w.message) for w in caught])
"""


def test_a_kernel_numba_cannot_cache_gets_a_warning_not_an_error(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.path.dirname(SOURCE), NUMBA_CACHE_DIR=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", UNCACHEABLE], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "Cannot cache compiled function" in result.stdout and "dynamic globals" in result.stdout
