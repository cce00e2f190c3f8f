"""No compiled helper inherits a kernel's ``fastmath``.

Numba compiles a jitted callee that does not set ``fastmath`` itself with the
flags of its first caller, and keeps that one compiled copy for every later
caller. A helper shared by a ``fastmath`` kernel and an exact one (the box
gradient's kernel and the forward's taps share the sample positions) would
then compute differently depending on which was compiled first: positions
fused into multiply-adds land a rounding away from the forward's, on the
other side of a whole cell (``docs/kernels.md``). So every jitted function a
``fastmath`` kernel reaches sets ``fastmath`` explicitly.
"""

from __future__ import annotations

import importlib
import pkgutil
import types

import numpy as np

import roipool
import roipool.cpu
from roipool import reference


def _dispatchers():
    from numba.core.registry import CPUDispatcher

    modules = [importlib.import_module(f"roipool.cpu.{m.name}") for m in pkgutil.iter_modules(roipool.cpu.__path__)]
    found = {}
    for module in modules:
        for obj in vars(module).values():
            if isinstance(obj, CPUDispatcher) and obj.py_func.__module__ == module.__name__:
                found[obj.py_func.__qualname__, module.__name__] = obj
    return list(found.values()), CPUDispatcher


def _callees(dispatcher, kind):
    def names(code):
        yield from code.co_names
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                yield from names(const)

    scope = dispatcher.py_func.__globals__
    return {scope[n] for n in names(dispatcher.py_func.__code__) if isinstance(scope.get(n), kind)}


def test_every_helper_a_fastmath_kernel_reaches_sets_fastmath_itself():
    dispatchers, kind = _dispatchers()
    kernels = [d for d in dispatchers if d.targetoptions.get("fastmath")]
    assert {d.py_func.__name__ for d in kernels} >= {"boxes_backward", "_gather", "_dot"}
    unset, stack, seen = [], [(k, k.py_func.__name__) for k in kernels], set()
    while stack:
        caller, path = stack.pop()
        for callee in _callees(caller, kind):
            if callee in seen or "fastmath" in callee.targetoptions:
                continue
            seen.add(callee)
            unset.append(f"{path} -> {callee.py_func.__name__}")
            stack.append((callee, f"{path} -> {callee.py_func.__name__}"))
    assert not unset, f"jitted helpers that would inherit fastmath (give them fastmath=False): {unset}"


def test_a_sample_a_rounding_below_a_whole_cell_takes_the_slope_of_its_own_piece():
    # scale 1/3: the forward puts row 3's sample at 9.999999999999998 (cell 9), fused it would be at 10.0
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 1, 16, 9))
    box = np.array([[0, 13.5, 25.5, 34.5, 34.5]])
    grad = rng.standard_normal((1, 1, 7, 7))
    for dtype in (np.float64, np.float32):
        got = roipool.roi_align_boxes_backward(grad.astype(dtype), x.astype(dtype), box, 7, 1 / 3, 1, False)
        want = reference.roi_align_boxes_backward(
            x.astype(dtype), grad.astype(dtype), box.astype(dtype), 1 / 3, 1, False
        )
        tol = 1e-12 if dtype == np.float64 else 2e-5
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max(), err_msg=str(dtype))
