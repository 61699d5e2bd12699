"""The report's answer: ce against random and the controls, differences with MOVER intervals, verdicts."""

import math

import pandas as pd
import pytest

from evaluation.reporting import answer
from evaluation.reporting.paper_tables import display_table


def _table(cells, column="classification"):
    """A Table-2-shaped frame: init key -> (value, low, high)."""
    rows = {k: {"row": k, column: v, f"{column} low": lo, f"{column} high": hi, f"{column} paper": math.nan}
            for k, (v, lo, hi) in cells.items()}
    return pd.DataFrame.from_dict(rows, orient="index")


def test_difference_combines_the_two_intervals_by_mover():
    # ce 15 [13, 16], random 18 [17, 20]: d = -3; low = -3 - hypot(2, 2); high = -3 + hypot(1, 1)
    d, low, high = answer.difference((15.0, 13.0, 16.0), (18.0, 17.0, 20.0))
    assert d == -3.0
    assert low == pytest.approx(-3 - math.sqrt(8)) and high == pytest.approx(-3 + math.sqrt(2))
    assert math.isnan(answer.difference((1.0, math.nan, 2.0), (1.0, 0.5, 1.5))[1])


def test_verdicts_follow_the_interval_and_the_metric_direction():
    assert answer.verdict(2.0, 0.5, 3.5) == "ce better"
    assert answer.verdict(-2.0, -3.5, -0.5) == "ce worse"
    assert answer.verdict(-2.0, -3.5, -0.5, lower_is_better=True) == "ce better"  # a lower L2 is better
    assert answer.verdict(0.1, -1.0, 1.2).startswith("not resolved")


def test_answer_rows_per_rival_with_the_tables_formatting():
    t2 = _table({"random": (18.15, 16.52, 19.22), "ce": (15.4, 14.09, 16.17), "autoencoder": (15.59, 14.06, 16.36),
                 "supervised": (math.nan, math.nan, math.nan)})
    found = answer.answer(t2, ["classification"], metrics2={"classification": "mAP"})
    assert list(found["rival"]) == ["random init", "autoencoder"]  # the supervised cell is empty: no row
    first = found.iloc[0]
    assert first["task"] == "classification (mAP) ↑" and first["verdict"] == "ce worse"
    assert first["ce"] == display_table(t2, ["classification"]).at["ce", "classification (ours) ↑"]  # one format
    assert first["ce - rival [95%]"] == "-2.75 [-4.44, -0.95]"
    assert "worse on 1 and not resolved on 0 of 1" in answer.headline(found)
    assert answer.summary(found)[0].startswith("classification (mAP) ↑: ce 15.4 [14.1, 16.2] vs random")


def test_inpainting_compares_lower_errors_as_better():
    t1 = _table({"nn-inpainting:ce": (8.0, 7.8, 8.2), "nn-inpainting:hog": (11.7, 11.3, 12.1)}, column="Mean L2")
    found = answer.answer(t1=t1)
    assert list(found["task"]) == ["NN-inpainting (mean L2) ↓"] and list(found["verdict"]) == ["ce better"]


def test_the_warning_about_classes_without_positives_names_them():
    import numpy as np

    from evaluation.metrics import classification_map

    labels = np.array([[1, -1, -1], [-1, -1, 1]])  # class 1 has no positive image
    with pytest.warns(UserWarning, match=r"class\(es\) bicycle \(1\) have no positive image"):
        classification_map(np.zeros((2, 3)), labels, class_names=("aeroplane", "bicycle", "bird"))


def test_readme_parts_are_replaced_whole_and_only_between_their_markers(tmp_path):
    from cebench.errors import CebenchError
    from evaluation import readme

    text = "intro\n<!-- generated:smoke-tables -->\nold\nlines\n<!-- /generated:smoke-tables -->\nafter\n"
    new = readme.replace_part(text, "smoke-tables", "| a |\n|---|\n")
    assert new == "intro\n<!-- generated:smoke-tables -->\n| a |\n|---|\n<!-- /generated:smoke-tables -->\nafter\n"
    assert readme.replace_part(new, "smoke-tables", "| a |\n|---|\n") == new  # rerunning changes nothing
    with pytest.raises(CebenchError, match="generated:voc-mini-answer"):
        readme.replace_part(text, "voc-mini-answer", "x")
