"""The package's import graph: no module imports itself back, directly or through others.

Read statically from the sources, counting every ``import`` (at module level
and inside functions alike: a lazy import that closes a loop still ties the
two modules together). Checked twice: between modules, and between the
package's rooms, each subpackage (``cpu``, ``_torch``, ``fastrcnn``, ...)
taken as one node.
"""

import ast
from pathlib import Path

import roipool

PACKAGE_DIR = Path(roipool.__file__).parent

# Cycles another branch removes; the lead drops each entry when merging it.
KNOWN_CYCLES: set = set()  # none: a cycle that must stay for a while is listed here with its reason


def _module_names():
    names = {}
    for path in PACKAGE_DIR.rglob("*.py"):
        parts = ("roipool",) + path.relative_to(PACKAGE_DIR).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _imports(name, path, modules):
    """The package's modules that ``name`` (at ``path``) imports, by name."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            # ``from X import y``: y is a submodule of X, or a name in X
            targets = [
                f"{prefix}.{alias.name}" if f"{prefix}.{alias.name}" in modules else prefix for alias in node.names
            ]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def _cycles(graph):
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, result = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                result.append(frozenset(component))

    for v in graph:
        if v not in index:
            visit(v)
    return result


def test_the_import_graph_is_read_correctly():
    modules = _module_names()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    # spot checks of the reader itself, so that an empty graph cannot pass the test below
    assert "roipool._checks" in graph["roipool._numpy.roi_pool"]
    assert "roipool.cpu.roi_pool" in graph["roipool._numpy.roi_pool"]
    assert "roipool._torch._library" in graph["roipool._torch.roi_pool"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset("abc")]


def _room(name, modules):
    """``roipool.<subpackage>`` for a module inside a subpackage, else the module itself."""
    parts = name.split(".")
    room = ".".join(parts[:2])
    return room if len(parts) > 2 and (PACKAGE_DIR / parts[1] / "__init__.py").exists() else name


def _graphs():
    modules = _module_names()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    rooms = {}
    for name, targets in graph.items():
        rooms.setdefault(_room(name, modules), set()).update(_room(t, modules) for t in targets)
    for room, targets in rooms.items():
        targets.discard(room)
    return graph, rooms


def _describe(cycles):
    return "import cycles: " + "; ".join(" <-> ".join(sorted(c)) for c in cycles)


def test_no_import_cycle_between_modules():
    graph, _ = _graphs()
    cycles = set(_cycles(graph)) - KNOWN_CYCLES
    assert not cycles, _describe(cycles)


def test_no_import_cycle_between_subpackages():
    _, rooms = _graphs()
    cycles = set(_cycles(rooms)) - KNOWN_CYCLES
    assert not cycles, _describe(cycles)
