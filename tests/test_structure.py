"""The library's shape: no import cycle (function-level imports included) and
no module over 400 lines."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "simclr_tf2")
MAX_LINES = 400


def _modules():
    """Dotted module name -> file, for every module of simclr_tf2."""
    found = {}
    for directory, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                file = os.path.join(directory, name)
                parts = os.path.relpath(file, ROOT)[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                found[".".join(parts)] = file
    return found


def import_graph():
    """Module -> the simclr_tf2 modules it imports anywhere in its source
    (top level or inside functions). `from package import name` counts as
    an import of package.name when that is a module, else of the package."""
    modules = _modules()
    graph = {}
    for module, file in modules.items():
        with open(file) as f:
            tree = ast.parse(f.read(), file)
        is_package = file.endswith("__init__.py")
        edges = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    anchor = module.split(".") if is_package else module.split(".")[:-1]
                    anchor = anchor[:len(anchor) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules
                           else base for alias in node.names]
            else:
                continue
            edges.update(t for t in targets if t in modules and t != module)
        graph[module] = edges
    return graph


def find_cycle(graph):
    """One import cycle as a list of modules, or None."""
    state, stack = {}, []

    def visit(module):
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module)
            if cycle:
                return cycle
    return None


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import(tmp_path):
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    source = "def f():\n    from simclr_tf2.training.runner import run\n"
    tree = ast.parse(source)
    imports = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert [n.module for n in imports] == ["simclr_tf2.training.runner"]


def test_the_library_has_no_import_cycle():
    graph = import_graph()
    assert "simclr_tf2.training.runner" in graph["simclr_tf2.train"]
    assert "simclr_tf2.rundir" in graph["simclr_tf2.export.hub"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_no_module_is_over_400_lines():
    long = {module: sum(1 for _ in open(file)) for module, file in _modules().items()}
    assert not {m: n for m, n in long.items() if n > MAX_LINES}, long
