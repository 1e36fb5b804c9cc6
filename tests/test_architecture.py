"""The shape of the code (SPEC section 6): data flows one way, backends stand
alone, files stay small.  Imports are read with `ast`, lazy ones inside
functions included: a lazy import is still a dependency."""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "gpubackprop"
MAX_LINES = 500


def _module_name(path):
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path):
    """The gpubackprop modules `path` imports (absolute names)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        found.update(t for t in targets if t.startswith("gpubackprop"))
    return found


def _graph():
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        # `from . import x` may name a module or an attribute: keep modules only
        graph[name] = {t for t in _imports(path) if t in files and t != name}
    return graph


def test_no_import_cycle():
    graph = _graph()
    # a package's __init__ re-exports its modules: edges into it are not cycles
    # through the modules themselves, so leave __init__ modules out of the walk
    inits = {n for n in graph if (PACKAGE.parent / n.replace(".", "/") / "__init__.py").exists()}
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node] - inits):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(set(graph) - inits):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_backend_imports_another_backend():
    from gpubackprop.backends import REGISTRY

    backend_modules = {f"gpubackprop.backends.{v.split(':')[0]}" for v in REGISTRY.values()}
    graph = _graph()
    bad = {m: sorted(graph[m] & (backend_modules - {m})) for m in backend_modules}
    assert not {m: o for m, o in bad.items() if o}, bad


def test_data_flows_one_way():
    """Backends never reach up into the network, trainer, optimizer or CLI."""
    upper = {"gpubackprop.network", "gpubackprop.trainer", "gpubackprop.optim",
             "gpubackprop.cli", "gpubackprop.checkpoint", "gpubackprop.sklearn"}
    graph = _graph()
    bad = {m: sorted(deps & upper) for m, deps in graph.items()
           if m.startswith("gpubackprop.backends") and deps & upper}
    assert not bad, bad


@pytest.mark.parametrize("folder", ["gpubackprop", "kernels"])
def test_no_file_over_500_lines(folder):
    too_long = {str(p.relative_to(ROOT)): n for p in (ROOT / folder).rglob("*")
                if p.suffix in (".py", ".cu", ".cuh", ".h")
                and (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not too_long, too_long


def test_no_option_read_from_the_environment():
    """Options are arguments: the package reads no environment variable."""
    readers = ("os.environ", "os.getenv", "environ.get", "environ[")
    found = [str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py")
             if any(r in p.read_text() for r in readers)]
    assert not found, found
