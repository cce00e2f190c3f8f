"""Numba CPU code: kernels and their launchers, one module per op family; geometry, SIMD vectors, work split.

Inputs here are already validated (``roipool._checks``); launchers take
channels-last arrays in the compute dtype and caller-allocated outputs.
Importing the package first makes Numba's cache key cover every source file
here (``_cache``), so a change to a shared helper recompiles its callers.
"""

from . import _cache

_cache.install()
