"""What the command lines say before they run: --print-config, --help with the profile's values and true on/off
defaults, a mistyped profile's nearest name, an existing record refused before any data, run_all's --threads."""

import pytest
import yaml

from cebench import suite
from cebench.config import get_profile
from cebench.errors import CebenchError
from evaluation import tables
from transfer import classify


def test_print_config_prints_defaults_under_profile_under_flags(capsys):
    with pytest.raises(SystemExit) as done:
        classify.main(["--profile", "smoke", "--lr", "0.5", "--print-config"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("# python -m transfer.classify: profile smoke")
    cfg = yaml.safe_load(text)
    assert cfg["lr"] == 0.5 and cfg["steps"] == 60 and cfg["momentum"] == 0.9  # flag, profile, parser default
    assert cfg["profile"] == "smoke" and "print_config" not in cfg


def test_help_shows_the_profile_values_and_true_on_off_defaults(capsys):
    with pytest.raises(SystemExit):
        classify.main(["--profile", "smoke", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "schedule in iterations (default: 60)" in text  # smoke's, not the paper's 80000
    assert "--no-rescale fine-tune from the raw init (default: off)" in text  # rescaling is on: the flag is off
    assert "(default: None)" not in text and "default: smoke" in text


def test_a_mistyped_profile_names_the_nearest():
    with pytest.raises(CebenchError, match="unknown profile 'smok'; did you mean 'smoke'?"):
        get_profile("smok")
    with pytest.raises(CebenchError, match="did you mean 'voc-mini'"):
        tables.main(["--profile", "vocmini"])


def test_an_existing_record_is_refused_before_any_data(tmp_path):
    out = tmp_path / "classify_random.json"
    out.write_text("{}")
    # the VOC root does not exist: the refusal comes first, so no data was looked at
    with pytest.raises(CebenchError, match="classify_random.json exists; pass --overwrite"):
        classify.main(["--profile", "smoke", "--weights", "random", "--voc-root", str(tmp_path / "none"),
                       "--out", str(out), "--threads", "1"])


def test_run_all_threads_pass_to_the_stages_that_take_them(tmp_path, capsys):
    suite.main(["smoke", "--dry-run", "--threads", "1", "--results", str(tmp_path / "res")])
    commands = [line for line in capsys.readouterr().out.splitlines() if line.startswith("$ python -m")]
    takes = [c for c in commands if c.split()[3] in ("pretrain.train", "transfer.classify", "evaluation.probe")]
    others = [c for c in commands if c.split()[3] in ("voc.synthetic", "evaluation.tables", "evaluation.report")]
    assert takes and all("--threads 1" in c for c in takes)
    assert others and not any("--threads" in c for c in others)
