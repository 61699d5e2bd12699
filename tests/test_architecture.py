"""The shape of the tree, read from its source (no imports run): no import cycle anywhere."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cebench", "pretrain", "transfer", "evaluation", "voc")


def _modules():
    """Dotted name -> source file, for every module of the project's packages."""
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def imports_of(name):
    """The project's modules that `name` imports, at module level or inside a function (both are arrows)."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        else:
            continue
        found |= {t for t in targets if t in MODULES and t != name}
    return found


GRAPH = {name: imports_of(name) for name in MODULES}


def _cycle_from(start):
    """One import cycle through `start` as a list of modules, or None (depth-first search)."""
    stack = [(start, [start])]
    seen = set()
    while stack:
        node, path = stack.pop()
        for nxt in GRAPH[node]:
            if nxt == start:
                return path + [start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, path + [nxt]))
    return None


def test_no_import_cycle_anywhere():
    cycles = [c for c in map(_cycle_from, sorted(GRAPH)) if c]
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_graph_sees_known_arrows():  # guards the checks above against a parser that finds no import at all
    assert "cebench.errors" in GRAPH["cebench.files"]
    assert "cebench.logs" in GRAPH["cebench.errors"]  # run_cli closes the bars (an import inside a function)
