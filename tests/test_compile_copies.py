"""No jitted helper is compiled twice because a kernel passed it a bare literal.

Numba types a Python literal argument (``0``, ``False``) as a constant of its own
(``Literal[bool](False)``) and compiles a separate copy of a helper that is not
inlined for each such constant; every kernel calling it then links and optimises
that copy too, which costs first-call compile time (``docs/kernels.md``,
maintenance notes). The kernels pass ``_simd.ZERO``, ``_simd.FALSE`` and
``_simd.TRUE`` instead. This reads the source of every compiled function in
``roipool.cpu`` for such calls.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import types

import roipool.cpu


def _literal_calls(source, scope, name, dispatcher_type):
    """``"name.caller -> callee(arg)"`` for each bare bool or int that a jitted function of ``source``
    (a module's, its globals ``scope``) passes to a jitted callee that is not inlined."""

    def callee_of(node):
        if isinstance(node, ast.Name):
            return scope.get(node.id)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            owner = scope.get(node.value.id)
            return getattr(owner, node.attr, None) if isinstance(owner, types.ModuleType) else None
        return None

    found = []
    for fn in ast.walk(ast.parse(source)):
        if not (isinstance(fn, ast.FunctionDef) and isinstance(scope.get(fn.name), dispatcher_type)):
            continue
        for call in ast.walk(fn):
            if not isinstance(call, ast.Call):
                continue
            callee = callee_of(call.func)
            if not isinstance(callee, dispatcher_type) or callee.targetoptions.get("inline") == "always":
                continue
            for arg in [*call.args, *(k.value for k in call.keywords)]:
                if isinstance(arg, ast.Constant) and type(arg.value) in (bool, int):
                    found.append(f"{name}.{fn.name} -> {callee.py_func.__name__}({arg.value!r})")
    return found


def test_no_compiled_helper_is_passed_a_bare_literal():
    from numba.core.registry import CPUDispatcher

    modules = [importlib.import_module(f"roipool.cpu.{m.name}") for m in pkgutil.iter_modules(roipool.cpu.__path__)]
    calls = [
        call
        for module in modules
        for call in _literal_calls(inspect.getsource(module), vars(module), module.__name__, CPUDispatcher)
    ]
    assert not calls, f"pass _simd.ZERO / FALSE / TRUE instead of these literals: {calls}"


def test_the_check_sees_a_literal_passed_to_a_jitted_helper():
    # the check itself, on source written for it: one bare literal, one variable, one inlined callee
    from numba.core.registry import CPUDispatcher

    source = (
        "import numba\n"
        "@numba.njit\n"
        "def helper(a, flag):\n    return a if flag else -a\n"
        "@numba.njit(inline='always')\n"
        "def inlined(a, flag):\n    return a if flag else -a\n"
        "@numba.njit\n"
        "def kernel(a, yes):\n    return helper(a, False) + helper(a, yes) + inlined(a, True)\n"
    )
    scope = {}
    exec(compile(source, "<probe>", "exec"), scope)
    assert _literal_calls(source, scope, "probe", CPUDispatcher) == ["probe.kernel -> helper(False)"]
