"""evaluation.tables: Table 1 and Table 2 from hand-written records, the paper's numbers beside ours."""

import json

import pandas as pd
import pytest

from cebench.errors import CebenchError
from cebench.records import make_record, write_record
from evaluation import tables
from evaluation.paper_tables import read_published


def _record(task, init, value, ci, seed=0, metric="mAP", **extra):
    return make_record(task=task, init=init, dataset="VOC2007", split="val", metric=metric, value=value, ci95=ci,
                       per_class={}, n_images=50, seed=seed, wall_time_s=1.0, config={"profile": "unit"},
                       protocol=extra.pop("protocol", {"mode": "fine-tune"}), **extra)


def _inpainting(init, method, l1, l2, db):
    scores = {"l1": {"value": l1, "ci95": [l1 - 1, l1 + 1]}, "l2": {"value": l2, "ci95": [l2 - 0.5, l2 + 0.5]},
              "psnr": {"value": db, "ci95": [db - 0.3, db + 0.3]}}
    return _record("inpainting", init, l2 / 100, (l2 / 100 - 0.005, l2 / 100 + 0.005), metric="mean L2",
                   method=method, scores=scores)


@pytest.fixture()
def results(tmp_path):
    meta = {"wall_time_s": 5400.0, "images_seen": 96000, "device": "cpu"}
    write_record(tmp_path / "classification_ce.json",
                 _record("classification", "ce", 0.40, (0.38, 0.42), protocol={"mode": "fine-tune",
                                                                               "pretrain_meta": meta}))
    write_record(tmp_path / "classification_random_s0.json", _record("classification", "random", 0.30, (0.28, 0.32)))
    write_record(tmp_path / "classification_random_s1.json",
                 _record("classification", "random", 0.34, (0.32, 0.36), seed=1))
    write_record(tmp_path / "retrieval_hog.json", _record("retrieval", "hog", 0.25, (0.2, 0.3), metric="precision@10"))
    uncentred = _record("retrieval", "hog", 0.15, (0.1, 0.2), metric="precision@10")
    uncentred["config"]["center"] = False  # another protocol: its own column, never averaged with the above
    write_record(tmp_path / "retrieval_hog_uncentred.json", uncentred)
    write_record(tmp_path / "inpainting_hog.json", _inpainting("hog", "nn-inpainting", 20.0, 7.0, 12.0))
    write_record(tmp_path / "inpainting_ce_decoder.json", _inpainting("ce", "context-encoder", 10.0, 2.5, 17.0))
    (tmp_path / "speed.json").write_text(json.dumps({"not": "a record"}))
    return tmp_path


def test_tables_from_records(results):
    out = tables.main(["--results", str(results)])
    t2 = out["table2"]
    # ours beside the paper's; two seeds averaged; a missing run is empty (NaN), never zero
    assert t2.at["ce", "classification"] == pytest.approx(40.0)
    assert t2.at["ce", "classification paper"] == pytest.approx(56.5)
    assert t2.at["random", "classification"] == pytest.approx(32.0)
    assert t2.at["random", "classification runs"] == 2
    assert pd.isna(t2.at["ce", "detection"]) and t2.at["ce", "detection paper"] == pytest.approx(44.5)
    assert t2.at["ce", "pretraining time (ours)"] == "1.5 hours (cpu)"
    assert t2.at["ce", "images seen (ours)"] == "96,000"
    assert t2.at["hog", "retrieval"] == pytest.approx(25.0) and t2.at["hog", "retrieval runs"] == 1
    assert t2.at["hog", "retrieval (uncentred)"] == pytest.approx(15.0)
    t1 = out["table1"]
    assert t1.at["nn-inpainting:hog", "Mean L2"] == pytest.approx(7.0)
    assert t1.at["nn-inpainting:hog", "Mean L2 paper"] == pytest.approx(6.92)
    assert pd.isna(t1.at["nn-inpainting:ce", "PSNR"])  # the paper's row without a run of ours
    assert t1.at["context-encoder:ce", "PSNR paper"] == pytest.approx(18.58)
    for name in ("table1.csv", "table1.md", "table2.csv", "table2.md", "table2.png"):
        assert (results / name).stat().st_size > 0
    csv = pd.read_csv(results / "table2.csv", index_col="key")
    assert pd.isna(csv.at["ce", "detection"]) and csv.at["ce", "detection paper"] == pytest.approx(44.5)
    md = (results / "table2.md").read_text()
    assert "40.0 [38.0, 42.0]" in md and "Provenance: profile unit" in md and "1 other JSON" in md
    ce_row = next(line for line in md.splitlines() if line.startswith("| Context encoder"))
    assert " 0.0" not in ce_row.replace("40.0", "")  # missing cells are blank


def test_tables_regenerate_identically(results):
    tables.main(["--results", str(results)])
    first = {p: (results / p).read_text() for p in ("table1.md", "table2.md", "table2.csv")}
    tables.main(["--results", str(results)])
    assert first == {p: (results / p).read_text() for p in first}


def test_no_records_is_a_clear_error(tmp_path):
    with pytest.raises(CebenchError, match="no result records"):
        tables.main(["--results", str(tmp_path)])
    with pytest.raises(CebenchError, match="not found"):
        tables.main(["--results", str(tmp_path / "missing")])


def test_published_numbers_name_their_source():
    published = read_published()
    assert published["source"].str.contains("Pathak").all()
    ce = published[(published["key"] == "ce") & (published["column"] == "classification")]
    assert ce["value"].tolist() == ["56.5"]


def test_bar_chart_accepts_a_value_outside_its_interval(tmp_path):
    import pandas as pd

    from evaluation.figures import table_bars

    table = pd.DataFrame({"classification": [15.2], "classification low": [15.8], "classification high": [36.7]},
                         index=["Random Gaussian"])
    path = table_bars(tmp_path / "t2.png", table, ["classification"])
    assert path.stat().st_size > 0


def _probe(init, values, seed=0):
    """A probe record (one per initialisation) with a cell per layer, as evaluation.probe writes it."""
    layers = {f"conv{i + 1}": {"value": v, "ci95": [v - 2.0, v + 2.0], "per_class": {}, "c": 0.01}
              for i, v in enumerate(values)}
    last = values[-1] / 100
    return _record("probe", init, last, (last - 0.02, last + 0.02), seed=seed, layers=layers, layer="conv5",
                   protocol={"mode": "linear probe per layer"})


def test_table3_inits_by_layers_from_probe_records(results):
    write_record(results / "probe_random.json", _probe("random", [17.0, 23.0, 24.5, 22.8, 22.2]))
    write_record(results / "probe_random_s1.json", _probe("random", [19.0, 25.0, 24.5, 22.8, 22.2], seed=1))
    write_record(results / "probe_ce.json", _probe("ce", [16.4, 14.3, 14.7, 14.8, 13.4]))
    write_record(results / "probe_autoencoder.json", _probe("autoencoder", [15.0, 15.5, 16.0, 16.5, 17.0]))
    write_record(results / "probe_ce-untrained.json", _probe("ce-untrained", [16.0, 18.0, 17.0, 16.0, 15.0]))
    out = tables.main(["--results", str(results)])
    t3 = out["table3"]
    assert list(t3.index) == ["random", "autoencoder", "ce", "ce-untrained"]  # the paper's row order, then ours
    assert t3.at["random", "conv1"] == pytest.approx(18.0) and t3.at["random", "conv1 runs"] == 2  # seeds averaged
    assert t3.at["ce", "conv5"] == pytest.approx(13.4) and t3.at["ce", "conv5 low"] == pytest.approx(11.4)
    assert t3.at["autoencoder", "row"] == "Autoencoder"
    assert t3.at["ce-untrained", "row"].startswith("Context encoder, untrained")
    md = (results / "table3.md").read_text()
    assert "| conv1 (ours)" in md and "14.3 [12.3, 16.3]" in md and "(paper)" not in md
    csv = pd.read_csv(results / "table3.csv", index_col="key")
    assert csv.at["autoencoder", "conv3"] == pytest.approx(16.0)
    assert (results / "table3.png").stat().st_size > 0
    # probe records stay out of Table 2, whose rows are the paper's and whose columns are the transfer tasks
    assert not any(c.startswith("probe") for c in out["table2"].columns)
    assert pd.isna(out["table2"].at["autoencoder", "classification"])
