"""Numba's on-disk cache, keyed on every kernel source in ``cpu/``, not just the function's own file.

Numba stamps a cached function with a hash of the file that defines it, so a
kernel whose helper lives in another file (``_simd.py``, ``geometry.py``)
would keep running the old helper from the cache after the helper changed.
:class:`KernelSourcesLocator` wraps Numba's own locator for functions defined
in this package and adds a hash of all of its ``.py`` files to the stamp:
editing any of them recompiles every kernel here on its next use.
"""

from __future__ import annotations

import hashlib
import os

from numba.core import caching

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))

# Where Numba keeps its list of locators (``_CacheImpl`` before Numba 0.61). Both
# are internal: if a Numba release moves them, install() does nothing and
# tests/test_numba_cache.py fails, rather than every import of roipool.
_CACHE_IMPL = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl", None)


def sources_digest(directory: str = _PACKAGE_DIR) -> str:
    """SHA-256 over the names and contents of the ``.py`` files in ``directory``, in name order."""
    digest = hashlib.sha256()
    for name in sorted(os.listdir(directory)):
        if name.endswith(".py"):
            digest.update(name.encode())
            with open(os.path.join(directory, name), "rb") as f:
                digest.update(hashlib.sha256(f.read()).digest())
    return digest.hexdigest()


class KernelSourcesLocator(caching._CacheLocator):
    """Numba's usual cache place for a function in ``cpu/``, with all of ``cpu/``'s sources in its stamp."""

    def __init__(self, inner):
        self._inner = inner
        # Numba names the source file in its "cannot cache" warning
        self._py_file = getattr(inner, "_py_file", None)

    def ensure_cache_path(self):
        self._inner.ensure_cache_path()

    def get_cache_path(self):
        return self._inner.get_cache_path()

    def get_source_stamp(self):
        return (self._inner.get_source_stamp(), sources_digest())

    def get_disambiguator(self):
        return self._inner.get_disambiguator()

    @classmethod
    def from_function(cls, py_func, py_file):
        if os.path.dirname(os.path.abspath(py_file)) != _PACKAGE_DIR:
            return None
        for other in _CACHE_IMPL._locator_classes:
            if other is not cls:
                inner = other.from_function(py_func, py_file)
                if inner is not None:
                    return cls(inner)
        return None


def install() -> None:
    """Put :class:`KernelSourcesLocator` first in Numba's list (once); it declines functions outside ``cpu/``."""
    locators = getattr(_CACHE_IMPL, "_locator_classes", None)
    if isinstance(locators, list) and KernelSourcesLocator not in locators:
        locators.insert(0, KernelSourcesLocator)
