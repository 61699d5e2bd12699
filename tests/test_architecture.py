"""The shape of the tree, read from its source (no imports run): no import cycle anywhere."""

import ast
from pathlib import Path

from cebench.stages import NAMES

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


LAYERS = ("cebench", "voc", "pretrain", "transfer", "evaluation")  # each may import those before it only
PURE = "evaluation.metrics"  # the pure metrics: importable by any layer, importing nothing of ours but themselves


FRONT = "cebench.cli"  # the `cebench` command: the front door, importing a subcommand's modules when it runs


def _in(name, package):
    return name == package or name.startswith(package + ".")


def _layer(name):
    if name == FRONT:
        return len(LAYERS)  # above every layer: it dispatches to all of them
    return LAYERS.index(name.split(".")[0])


def test_no_arrow_runs_back_up():
    upward = [(m, d) for m, deps in GRAPH.items() for d in deps
              if _layer(d) > _layer(m) and not _in(d, PURE)]
    assert not upward, f"imports of a later layer: {sorted(upward)}"


def test_transfer_imports_only_the_pure_metrics_of_evaluation():
    found = {d for m, deps in GRAPH.items() if _in(m, "transfer") for d in deps if _in(d, "evaluation")}
    assert found and all(_in(d, PURE) for d in found), sorted(found)


def test_the_pure_metrics_import_nothing_of_ours_but_one_another():
    found = {(m, d) for m, deps in GRAPH.items() if _in(m, PURE) for d in deps if not _in(d, PURE)}
    assert not found, sorted(found)


def test_reporting_reads_no_experiment_and_no_entry_point():
    reporting = [m for m in GRAPH if _in(m, "evaluation.reporting")]
    assert len(reporting) >= 4
    found = {(m, d) for m in reporting for d in GRAPH[m]
             if _in(d, "evaluation") and not (_in(d, "evaluation.reporting") or _in(d, PURE))}
    assert not found, sorted(found)


def test_the_plumbing_imports_no_model_code():  # the suite reads the stage table without importing a stage
    # cebench.cli is the `cebench` command, the front door to every layer (it imports a subcommand's modules only when
    # that subcommand runs), not plumbing that the layers import
    found = {(m, d) for m, deps in GRAPH.items() if _in(m, "cebench") and m != FRONT for d in deps
             if not _in(d, "cebench")}
    assert not found, sorted(found)


STAGE_NAMES = NAMES


def _stage_literals(path):
    return {n.value for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, ast.Constant) and n.value in STAGE_NAMES}


def test_at_most_one_file_spells_three_stage_names():  # the stage table; every other list is read from it
    spelling = {name: sorted(found) for name, path in MODULES.items() if len(found := _stage_literals(path)) >= 3}
    assert sorted(spelling) == ["cebench.stages"], spelling


def test_the_stage_name_count_sees_a_file_that_spells_them(tmp_path):  # guards the check above against a no-op
    path = tmp_path / "lists.py"
    path.write_text('JOBS = ("pretrain", "classify")\nif True:\n    run("segment")\n"""pretrain and probe"""\n')
    assert _stage_literals(path) == {"pretrain", "classify", "segment"}
    assert len(_stage_literals(MODULES["cebench.stages"])) == len(STAGE_NAMES)
