import argparse

import pytest

from cebench import CebenchError
from cebench.config import command_line_dests, get_profile, parse_with_profile, resolved_config


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
