"""benchmarks.yaml profiles merged under command-line flags: parser defaults < profile < CLI.

Layout of benchmarks.yaml::

    default_profile: smoke
    profiles:
      <name>:
        description: "..."
        common: {voc_root: ..., seed: 0}      # offered to every stage whose parser has the flag
        pretrain: {...}                       # one section per entry point, keys = flag dests
        classify: {...}
        run: {...}                            # what run_all.sh runs (read by cebench.suite)

Unknown keys and wrong types are errors (PyYAML reads ``1e-4`` as a string: write ``1.0e-4``).
Relative paths in PATH_KEYS resolve against the directory holding benchmarks.yaml.
"""

import argparse
import difflib
import math
import os
import sys
from pathlib import Path

import yaml

from cebench.errors import CebenchError
from cebench.names import check_name
from cebench.stages import NAMES

STAGES = NAMES  # the sections of a profile, one per stage (cebench.stages)
PROFILE_KEYS = {"description", "common", "run", *STAGES}
# Keys a profile's `common:` section may set: flags that several stages take (tests/test_config.py checks each
# against the entry points' parsers). Each stage takes the ones its parser has; any other key is a typo.
COMMON_KEYS = {"voc_root", "year", "images", "weights", "seed", "device", "threads", "workers", "cache", "arch",
               "width", "pool_free", "input_size", "batch_size", "max_steps", "steps", "dropout", "lr",
               "weight_decay", "lr_schedule", "lr_step", "lr_gamma", "momentum", "clip_grad", "ckpt_every",
               "log_every", "eval_every", "train_split", "test_split", "skip_bad", "rescale_images",
               "rescale_iterations", "fc_dim", "min_scale", "max_scale", "gallery_split", "query_split",
               "gallery_list", "query_list", "max_gallery", "max_queries", "features", "center", "health_images",
               "precision", "tensorboard"}
PATH_KEYS = {"voc_root", "images", "image_list", "region_shapes", "coco_json", "coco_test_json", "coco_images",
             "proposals", "proposals_cache", "results", "weights", "out", "sbd_root"}


def benchmarks_path():
    """benchmarks.yaml of this checkout, or the file named by $CEBENCH_BENCHMARKS."""
    env = os.environ.get("CEBENCH_BENCHMARKS")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "benchmarks.yaml"


def load_benchmarks(path=None):
    """Read and shape-check benchmarks.yaml with yaml.safe_load."""
    path = Path(path) if path else benchmarks_path()
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise CebenchError(f"benchmarks file not found: {path}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = ": ".join(filter(None, (getattr(err, "context", None), getattr(err, "problem", None))))
        raise CebenchError(f"{where}: not valid YAML ({problem or str(err).splitlines()[0]})") from None
    if not isinstance(data, dict) or not isinstance(data.get("profiles"), dict):
        raise CebenchError(f"{path}: expected a mapping with a 'profiles' section")
    unknown = set(data) - {"default_profile", "profiles"}
    if unknown:
        raise CebenchError(f"{path}: unknown top-level keys {sorted(unknown)}")
    for name, prof in data["profiles"].items():
        check_name(name, f"{path}: profile")  # results/<profile>/ is named after it
        if not isinstance(prof, dict):
            raise CebenchError(f"{path}: profile {name!r} must be a mapping")
        bad = set(prof) - PROFILE_KEYS
        if bad:
            raise CebenchError(f"{path}: profile {name!r} has unknown sections {sorted(bad)}{_hint(bad, PROFILE_KEYS)}")
        common = prof.get("common") or {}
        if not isinstance(common, dict):
            raise CebenchError(f"{path}: profile {name!r}, common: must be a mapping of flag names to values")
        bad = set(common) - COMMON_KEYS
        if bad:
            raise CebenchError(f"{path}: profile {name!r}, common: unknown keys {sorted(bad)}{_hint(bad, COMMON_KEYS)}"
                               " (common holds settings that several stages take; others go in a stage's section)")
    data["_path"] = path
    return data


def _hint(unknown, known):
    """' (did you mean ...?)' for the unknown keys that look like a known one."""
    close = {k: difflib.get_close_matches(k, known, n=1) for k in sorted(unknown)}
    pairs = [f"{m[0]!r} for {k!r}" for k, m in close.items() if m]
    return f" (did you mean {', '.join(pairs)}?)" if pairs else ""


def get_profile(name=None, path=None):
    """The named profile (or the file's default) as a dict; a missing profile is a clear error."""
    data = load_benchmarks(path)
    name = name or data.get("default_profile")
    if name not in data["profiles"]:
        close = difflib.get_close_matches(str(name), list(data["profiles"]), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise CebenchError(f"unknown profile {name!r}; {hint}{data['_path']} defines {sorted(data['profiles'])}")
    prof = dict(data["profiles"][name])
    prof["_name"], prof["_dir"], prof["_path"] = name, data["_path"].parent, data["_path"]
    return prof


class Number:
    """The argparse type of a numeric flag with a lower bound (`positive_int`, `non_negative_float`, `at_least`).

    argparse only converts with it (an unparsable value is argparse's usual error); the bound is checked once the
    value is known, wherever it came from: a profile's value by `profile_defaults` (naming benchmarks.yaml), the
    command line's and the defaults by `check_flag_values`, one line each. NaN and infinities are no numbers here."""

    def __init__(self, base, low, strict, why=""):
        self.base, self.low, self.strict, self.why = base, low, strict, why
        self.__name__ = base.__name__  # argparse: "invalid int value: 'x'"

    def __call__(self, text):
        return self.base(text)

    def problem(self, value):
        """Why `value` is refused, or None."""
        if not math.isfinite(value):
            return "must be a finite number"
        if value > self.low or (value == self.low and not self.strict):
            return None
        if self.low == 0:
            return "must be positive" if self.strict else "must be 0 or more"
        return f"must be {'more than' if self.strict else 'at least'} {self.low:g}{self.why}"


positive_int, positive_float = Number(int, 0, strict=True), Number(float, 0, strict=True)
non_negative_int, non_negative_float = Number(int, 0, strict=False), Number(float, 0, strict=False)


def at_least(low, why=""):
    """An integer flag of at least `low`; `why` (e.g. " (BCa needs ...)") goes into the refusal."""
    return Number(int, low, strict=False, why=why)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _values(value):
    return value if isinstance(value, (list, tuple)) else [value]


def flag_name(action):
    return max(action.option_strings, key=len) if action.option_strings else action.dest


def check_flag_values(parser, args):
    """One line for the first flag whose value breaks its bound (see Number), and for --resume with --overwrite."""
    for action in parser._actions:
        if isinstance(action.type, Number):
            for value in _values(getattr(args, action.dest, None)):
                problem = _is_number(value) and action.type.problem(value)
                if problem:
                    raise CebenchError(f"{flag_name(action)} {problem}, got {value:g}")
    if getattr(args, "resume", False) and getattr(args, "overwrite", False):
        # the one rule of every entry point that has both: neither wins, the pair is refused
        raise CebenchError("--resume and --overwrite contradict each other (--resume continues the run in place, "
                           "--overwrite starts afresh and replaces it): pass one")


def _check_type(action, key, value, where):
    expect = None
    base = getattr(action.type, "base", action.type)
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        expect, ok = "true/false", isinstance(value, bool)
    elif action.nargs not in (None, "?"):
        expect, ok = "a list", isinstance(value, list)
    elif base is float:
        expect, ok = "a number", isinstance(value, (int, float)) and not isinstance(value, bool)
    elif base is int:
        expect, ok = "an integer", isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = value is None or isinstance(value, (str, int, float))
        expect = "a string"
    if not ok:
        hint = " (PyYAML reads 1e-4 as text: write 1.0e-4)" if isinstance(value, str) and expect == "a number" else ""
        raise CebenchError(f"{where}: {key} must be {expect}, got {value!r}{hint}")
    bad = [v for v in (value if isinstance(value, list) else [value]) if v not in (action.choices or [v])]
    if bad:  # a list flag (nargs) checks each of its values
        raise CebenchError(f"{where}: {key}={bad[0] if isinstance(value, list) else value!r} is not one of "
                           f"{list(action.choices)}")
    if isinstance(action.type, Number):
        for item in _values(value):
            problem = _is_number(item) and action.type.problem(item)
            if problem:
                raise CebenchError(f"{where}: {key} {problem}, got {item!r}")


def _resolve_path(key, value, base, action):
    """A relative path of PATH_KEYS against `base`; a keyword of the flag's type (its `keywords`) stays a word."""
    keyword = value in getattr(action.type, "keywords", ())
    if key in PATH_KEYS and isinstance(value, str) and not keyword and not os.path.isabs(value):
        return str((base / value).resolve())
    return value


def profile_defaults(parser, stage, profile):
    """The profile's values for `stage`, checked against the parser's flags."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}")
    actions = {a.dest: a for a in parser._actions}
    where = f"{profile.get('_path', 'benchmarks.yaml')}: profile {profile['_name']!r}"
    section = profile.get(stage) or {}
    if not isinstance(section, dict):
        raise CebenchError(f"{where}: section {stage!r} must be a mapping")
    unknown = sorted(set(section) - set(actions))
    if unknown:
        raise CebenchError(f"{where}, {stage}: unknown keys {unknown}{_hint(unknown, actions)}")
    values = {k: v for k, v in (profile.get("common") or {}).items() if k in actions}
    values.update(section)
    for key, value in values.items():
        _check_type(actions[key], key, value, f"{where}, {stage}")
    return {k: _resolve_path(k, v, profile["_dir"], actions[k]) for k, v in values.items()}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in --help as they are: the profile's where one is given (parse_with_profile sets them before
    --help prints), an on/off flag as 'on' or 'off', none repeated where the help already names it, no
    '(default: None)'; a docstring's usage lines kept as written."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is argparse.SUPPRESS or "%(default)" in text:
            return text
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            return f"{text} (default: {'on' if action.default == action.const else 'off'})".lstrip()
        if action.default is None or "(default" in text or "default:" in text:  # the help names it already
            return text
        return super()._get_help_string(action)


def entry_parser(prog, description, **kwargs):
    """The parser of an entry point: defaults shown in --help, no abbreviated flags, --profile first."""
    kwargs.setdefault("formatter_class", HelpFormatter)
    parser = argparse.ArgumentParser(prog, description=description, allow_abbrev=False, **kwargs)
    add_profile_flag(parser)
    return parser


def add_profile_flag(parser):
    """Every entry point takes --profile and --print-config."""
    parser.add_argument("--profile", default=None,
                        help="profile of benchmarks.yaml that supplies defaults (smoke, voc-mini, paper; without "
                             "--profile, the file's default_profile); flags given on the command line override it")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved configuration (parser defaults < profile < flags) as YAML and exit "
                             "without running anything; with --profile, --help shows that profile's defaults too")


def add_skip_bad_flag(group, what):
    """--skip-bad, one name wherever bad input files can be left out (`what`: how, and where they are listed)."""
    group.add_argument("--skip-bad", action="store_true", help=what)


def parse_with_profile(parser, argv, stage):
    """Two-stage parse (timm): find --profile, load its defaults for `stage`, parse again with them."""
    if not any(a.dest == "profile" for a in parser._actions):
        add_profile_flag(parser)
    argv = list(sys.argv[1:] if argv is None else argv)
    # --help waits for the profile, so that it shows the defaults this run would use
    known, _ = _without_help(parser).parse_known_args([a for a in argv if a not in ("-h", "--help")])
    profile = get_profile(known.profile)
    parser.set_defaults(**profile_defaults(parser, stage, profile), profile=profile["_name"])
    args = parser.parse_args(argv)
    check_flag_values(parser, args)
    args.profile = profile["_name"]
    if vars(args).pop("print_config", False):  # not part of the configuration (records, stamps, cells)
        print(f"# {parser.prog}: profile {profile['_name']} of {profile['_path']}; defaults < profile < flags")
        print(yaml.safe_dump(resolved_config(args), sort_keys=True, default_flow_style=False), end="")
        raise SystemExit(0)
    return args


def parse_config(parser, argv, stage):
    """The resolved configuration of an entry point (parser defaults < profile < command line) as a plain dict.
    --help and --print-config print and exit here: an entry point calls this before it imports torch or any model
    code (cebench.flags builds its parsers without them), so both answer in a fraction of a second."""
    return resolved_config(parse_with_profile(parser, argv, stage))


def _without_help(parser):
    """A copy of the parser's flags without -h, for the first pass (a bare parse would print help and exit)."""
    first = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    first.add_argument("--profile", default=None)
    return first


def command_line_dests(parser, argv=None):
    """The dests of the flags given on the command line itself (neither parser defaults nor the profile)."""
    unset = object()
    namespace = argparse.Namespace(**{a.dest: unset for a in parser._actions if a.dest != argparse.SUPPRESS})
    parser.parse_known_args(argv, namespace=namespace)  # argparse fills in defaults only for missing attributes
    return {dest for dest, value in vars(namespace).items() if value is not unset}


def resolved_config(args):
    """The run's configuration as a plain dict, ready for a record or checkpoint."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in sorted(vars(args).items())}
