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


# ------------------------------------------------------------ the centre's shape
MAX_FUNCTION_LINES = 60
# Every name a run or training mode has (configs/modes.py, spelled out so a
# rename there cannot empty the check).
MODE_NAMES = {"pretrain", "finetune", "linear_eval", "distill", "eval", "train_then_eval"}
# The one module that maps modes to tasks; and two modules whose own `mode`
# is not a run's: the input recipe (data/pipeline.py: 'pretrain' two views,
# 'finetune' one, 'eval' the centre crop) and SimCLRModel's head layout, both
# chosen by the task (Task.layout).
MODE_MAPPING = os.path.join(PACKAGE, "tasks", "__init__.py")
OTHER_MODES = {os.path.join(PACKAGE, "data", "pipeline.py"),
               os.path.join(PACKAGE, "models", "simclr_model.py")}
ENTRY_POINTS = ("train.py", "export_cli.py", "make_shards.py", "data_service.py", "demo.py")


def _strings(node):
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return set().union(set(), *(_strings(e) for e in node.elts))
    return set()


def mode_comparisons(source, name="<source>"):
    """'line: code' of every comparison with a mode's name in `source`."""
    found = []
    for node in ast.walk(ast.parse(source, name)):
        if isinstance(node, ast.Compare):
            names = _strings(node.left).union(*(_strings(c) for c in node.comparators))
            if names & MODE_NAMES:
                found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def private_assignments(source, name="<source>"):
    """'line: target' of every assignment to a private attribute of an object
    other than self/cls (another package's internals), setattr included."""
    found = []
    for node in ast.walk(ast.parse(source, name)):
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id == "setattr" and len(node.args) > 1
              and _strings(node.args[1]) and next(iter(_strings(node.args[1]))).startswith("_")):
            found.append(f"{node.lineno}: {ast.unparse(node)}")
        for target in targets:
            for part in ast.walk(target):
                if (isinstance(part, ast.Attribute) and part.attr.startswith("_")
                        and not part.attr.startswith("__")
                        and ast.unparse(part.value) not in ("self", "cls")):
                    found.append(f"{node.lineno}: {ast.unparse(target)}")
    return found


def caught_builtin_errors(source, name="<source>"):
    """The builtin error classes an `except` clause in `source` names."""
    caught = set()
    for node in ast.walk(ast.parse(source, name)):
        if isinstance(node, ast.ExceptHandler) and node.type is not None:
            kinds = node.type.elts if isinstance(node.type, ast.Tuple) else [node.type]
            caught.update(ast.unparse(k) for k in kinds
                          if ast.unparse(k) in ("ValueError", "RuntimeError", "Exception",
                                                "BaseException"))
        elif isinstance(node, ast.ExceptHandler):
            caught.add("everything")
    return caught


def test_the_checks_find_what_they_look_for():
    code = ("def f(run_config, x):\n"
            "    if run_config.mode == 'distill' or x in ('eval', 'other'):\n"
            "        orbit.controller._log = print\n"
            "        self._mine = 1\n"
            "    try:\n        pass\n    except (ValueError, KeyError):\n        pass\n")
    assert mode_comparisons(code) == [
        "2: run_config.mode == 'distill'", "2: x in ('eval', 'other')"]
    assert private_assignments(code) == ["3: orbit.controller._log"]
    assert caught_builtin_errors(code) == {"ValueError"}


def test_no_function_in_training_is_over_60_lines():
    long = {}
    for directory, _, files in os.walk(os.path.join(PACKAGE, "training")):
        for name in files:
            if name.endswith(".py"):
                file = os.path.join(directory, name)
                for node in ast.walk(ast.parse(open(file).read(), file)):
                    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        lines = node.end_lineno - node.lineno + 1
                        if lines > MAX_FUNCTION_LINES:
                            long[f"{name}:{node.name}"] = lines
    assert not long, long


def test_modes_are_compared_only_where_they_map_to_tasks():
    found = {}
    for file in _modules().values():
        if file == MODE_MAPPING or file in OTHER_MODES:
            continue
        hits = mode_comparisons(open(file).read(), file)
        if hits:
            found[os.path.relpath(file, ROOT)] = hits
    assert not found, found
    assert mode_comparisons(open(MODE_MAPPING).read())  # the mapping is where they are


def test_no_assignment_to_another_packages_private_attribute():
    found = {os.path.relpath(f, ROOT): private_assignments(open(f).read(), f)
             for f in _modules().values()}
    assert not {k: v for k, v in found.items() if v}, found


def test_entry_points_catch_only_the_librarys_errors():
    for name in ENTRY_POINTS:
        file = os.path.join(PACKAGE, name)
        assert not caught_builtin_errors(open(file).read(), file), name


def module_level_flag_definitions(source, name="<source>"):
    """Lines where a module defines absl flags at import (outside functions)."""
    tree = ast.parse(source, name)
    found = []
    for node in tree.body:
        for call in ast.walk(node):
            if (not isinstance(node, (ast.FunctionDef, ast.ClassDef))
                    and isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                    and call.func.attr.startswith("DEFINE")):
                found.append(call.lineno)
    return found


def test_flags_are_defined_by_the_entry_point_that_parses_them():
    assert module_level_flag_definitions("flags.DEFINE_bool('x', 1, '')\n"
                                         "def f():\n    flags.DEFINE_bool('y', 1, '')\n") == [1]
    found = {os.path.relpath(f, ROOT): module_level_flag_definitions(open(f).read(), f)
             for f in _modules().values()}
    assert not {k: v for k, v in found.items() if v}, found
