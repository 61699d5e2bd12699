"""The shape of the transfers, read from their source (issue 24 item 2): the three entry points are one parser plus
`main` each, importing only parser-level modules before they parse; each task package supplies its hooks to the one
driver as one TransferHooks subclass; below the entry layer (the entry points, the driver and the hooks) no function
takes the whole configuration."""

import ast
from pathlib import Path

import pytest

from cebench.stages import NAMES

ROOT = Path(__file__).resolve().parents[1]
ENTRY_POINTS = {"classify": "classification", "detect": "detection", "segment": "segmentation"}
# What an entry point's module top may import: argparse-level modules, none importing torch (tests/test_fast_help.py
# checks the same at run time)
PARSER_LEVEL = {"time", "argparse", "cebench.config", "cebench.errors", "cebench.flags", "transfer.flags",
                "transfer.segmentation.choices"}


def _tree(relative):
    return ast.parse((ROOT / relative).read_text())


def _top_functions(tree):
    return sorted(n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)))


def test_the_three_transfer_entry_points_define_the_same_top_level_functions():
    shapes = {stage: _top_functions(_tree(f"transfer/{stage}.py")) for stage in ENTRY_POINTS}
    assert all(shape == ["get_args_parser", "main"] for shape in shapes.values()), shapes


@pytest.mark.parametrize("stage", ENTRY_POINTS)
def test_an_entry_point_imports_only_parser_modules_before_it_parses(stage):
    tree = _tree(f"transfer/{stage}.py")
    top = {a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    top |= {n.module for n in tree.body if isinstance(n, ast.ImportFrom)}
    assert top <= PARSER_LEVEL, sorted(top - PARSER_LEVEL)
    main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main")
    kinds = [("import" if isinstance(s, (ast.Import, ast.ImportFrom)) else ast.unparse(s)) for s in main.body]
    parse = next(i for i, k in enumerate(kinds) if "parse_config(get_args_parser(), argv" in k)
    assert "import" not in kinds[:parse], kinds  # --help and --print-config exit before any heavy import
    assert repr(stage) in kinds[parse] and stage in NAMES
    tail = kinds[parse + 1:]
    assert tail.index("import") < next(i for i, k in enumerate(tail) if "start_run(cfg" in k), tail
    assert tail[-1].startswith("return driver.run("), tail


@pytest.mark.parametrize("stage,package", ENTRY_POINTS.items())
def test_each_task_supplies_its_hooks_as_one_class_named_for_its_stage(stage, package):
    from importlib import import_module

    from transfer.driver import TransferHooks

    module = import_module(f"transfer.{package}.hooks")
    classes = [v for v in vars(module).values() if isinstance(v, type) and issubclass(v, TransferHooks)
               and v is not TransferHooks]
    assert len(classes) == 1 and classes[0].stage == stage, classes
    # every step without a default is supplied (an abstract hook left out would refuse to instantiate)
    assert TransferHooks.__abstractmethods__ and not classes[0].__abstractmethods__, classes[0].__abstractmethods__


# the entry points, the driver and the hooks it calls; and the hooks `run_all.sh --check` calls (evaluation.check
# resolves a stage's configuration as its entry point does, then hands it to the stage's check.py)
ENTRY_LAYER = {"transfer/driver.py", "transfer/check.py", *(f"transfer/{s}.py" for s in ENTRY_POINTS),
               *(f"transfer/{p}/{hooks}.py" for p in ENTRY_POINTS.values() for hooks in ("hooks", "check"))}


def test_below_the_entry_layer_no_function_takes_the_configuration():
    taking = []
    for path in [*sorted((ROOT / "transfer").rglob("*.py")), ROOT / "pretrain" / "weights.py"]:
        relative = str(path.relative_to(ROOT))
        if relative in ENTRY_LAYER:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names = [a.arg for a in (*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs)]
                if {"cfg", "args"} & set(names):  # the resolved dict, or the namespace it came from
                    taking.append(f"{relative}:{node.lineno} {node.name}")
    assert not taking, taking
