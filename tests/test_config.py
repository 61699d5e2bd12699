import argparse

import pytest

from cebench import CebenchError
from cebench.config import (COMMON_KEYS, command_line_dests, get_profile, parse_with_profile, profile_defaults,
                            resolved_config)
from cebench.stages import STAGES


def _write(tmp_path, text):
    path = tmp_path / "benchmarks.yaml"
    path.write_text(text)
    return path


def _parser():
    p = argparse.ArgumentParser()
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--voc-root", default=None)
    p.add_argument("--probe", action="store_true")
    p.add_argument("--mask", choices=["central", "random-block"], default="central")
    return p


YAML = """
default_profile: a
profiles:
  a:
    common: {voc_root: data/voc, seed: 3}
    classify: {lr: 1.0e-4, steps: 7, probe: true, mask: random-block}
  b:
    classify: {lr: 1e-4}
  c:
    classify: {lrr: 0.1}
"""


def test_precedence_defaults_profile_cli(tmp_path, monkeypatch):
    monkeypatch.setenv("CEBENCH_BENCHMARKS", str(_write(tmp_path, YAML)))
    args = parse_with_profile(_parser(), [], "classify")
    assert (args.lr, args.steps, args.probe, args.mask) == (1.0e-4, 7, True, "random-block")
    assert args.voc_root == str((tmp_path / "data/voc").resolve())  # relative to the YAML's folder
    assert not hasattr(args, "seed")  # common keys only reach parsers that have the flag
    args = parse_with_profile(_parser(), ["--steps", "9", "--profile", "a"], "classify")
    assert args.steps == 9 and args.lr == 1.0e-4 and args.profile == "a"
    assert resolved_config(args)["steps"] == 9


def test_yaml_float_written_as_text_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CEBENCH_BENCHMARKS", str(_write(tmp_path, YAML)))
    with pytest.raises(CebenchError, match="1.0e-4"):
        parse_with_profile(_parser(), ["--profile", "b"], "classify")


def test_unknown_key_and_profile_are_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("CEBENCH_BENCHMARKS", str(_write(tmp_path, YAML)))
    with pytest.raises(CebenchError, match="unknown keys \\['lrr'\\]"):
        parse_with_profile(_parser(), ["--profile", "c"], "classify")
    with pytest.raises(CebenchError, match="unknown profile 'nope'"):
        get_profile("nope")


def test_repository_benchmarks_yaml_is_valid():
    for name in ("smoke", "voc-mini", "paper"):
        assert get_profile(name)["_name"] == name


def test_command_line_dests_are_the_flags_given(tmp_path, monkeypatch):
    monkeypatch.setenv("CEBENCH_BENCHMARKS", str(_write(tmp_path, YAML)))
    parser = _parser()
    parse_with_profile(parser, ["--steps", "9"], "classify")  # the profile's defaults are set on the parser
    assert command_line_dests(parser, ["--steps", "9", "--probe"]) == {"steps", "probe"}
    assert command_line_dests(parser, ["--lr=0.5"]) == {"lr"} and command_line_dests(parser, []) == set()


ENTRY_POINTS = {s.name: s.module for s in STAGES}
OTHER_COMMANDS = ("cebench.suite", "evaluation.speed", "pretrain.speed", "transfer.speed", "voc.synthetic",
                  "pretrain.export")


def _parsers():
    import importlib

    parsers = {stage: importlib.import_module(m).get_args_parser() for stage, m in ENTRY_POINTS.items()}
    return parsers, {m: getattr(importlib.import_module(m), "get_speed_parser", None)
                     or importlib.import_module(m).get_args_parser for m in OTHER_COMMANDS}


def test_typo_under_common_is_an_error_naming_key_and_file(tmp_path, monkeypatch):
    path = _write(tmp_path, "profiles:\n  a:\n    common: {voc_root: voc, sede: 3}\n    classify: {lr: 0.5}\n")
    monkeypatch.setenv("CEBENCH_BENCHMARKS", str(path))
    typo = f"{path}: profile 'a', common: unknown keys \\['sede'\\] \\(did you mean 'seed' for 'sede'"
    with pytest.raises(CebenchError, match=typo):
        parse_with_profile(_parser(), ["--profile", "a"], "classify")
    path.write_text("profiles:\n  a:\n    classify: {lr: 0.5, stpes: 3}\n")
    with pytest.raises(CebenchError, match=f"{path}: profile 'a', classify: unknown keys \\['stpes'\\]"):
        parse_with_profile(_parser(), ["--profile", "a"], "classify")


def test_yaml_syntax_error_gives_file_and_line(tmp_path, monkeypatch):
    path = _write(tmp_path, "profiles:\n  a:\n    common: {seed: 0}\n    classify: {lr: 0.5\n  b: {}\n")
    monkeypatch.setenv("CEBENCH_BENCHMARKS", str(path))
    with pytest.raises(CebenchError, match=f"{path}:5:[0-9]+: not valid YAML"):
        get_profile("a")


def test_common_keys_are_flags_that_several_stages_take():
    parsers, _ = _parsers()
    for key in COMMON_KEYS:
        stages = [s for s, p in parsers.items() if any(a.dest == key for a in p._actions)]
        assert len(stages) >= 2, f"common key {key!r} is a flag of {stages} only"


def test_every_command_refuses_abbreviated_flags():
    parsers, others = _parsers()
    for name, parser in [*parsers.items(), *((m, make()) for m, make in others.items())]:
        assert parser.allow_abbrev is False, name
    with pytest.raises(SystemExit):
        parse_with_profile(parsers["classify"], ["--max-step", "2"], "classify")


def test_every_section_of_the_repository_profiles_fits_its_entry_point():
    parsers, _ = _parsers()
    for name in ("smoke", "voc-mini", "paper"):
        profile = get_profile(name)
        for stage, parser in parsers.items():
            profile_defaults(parser, stage, profile)  # unknown keys and wrong types raise
