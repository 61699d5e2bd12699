"""evaluation.tables: Table 1 and Table 2 from hand-written records, the paper's numbers beside ours."""

import json
import os
import threading
from pathlib import Path

import pandas as pd
import pytest

from cebench.errors import CebenchError
from cebench.records import make_record, schedule_fields, write_record
from evaluation import report, tables
from evaluation.reporting.cells import is_complete, select
from evaluation.reporting.paper_tables import load_records, read_published


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
                 _record("classification", "ce", 0.40, (0.38, 0.42), protocol={
                     "mode": "fine-tune", "pretrain_meta": meta, "interval": "BCa bootstrap 95%, 1000 resamples"}))
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
    # one record says its interval is BCa, the others (no protocol.interval) are older percentile ones
    assert "Intervals: BCa and percentile bootstrap 95%" in md
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
    assert published["source"].str.contains("Pathak|Zhang, Isola & Efros").all()
    zhang = published[published["source"].str.contains("Zhang")]
    assert set(zhang["table"]) == {"table2", "table3", "table3-places"}
    assert zhang["source"].str.contains("CVPR 2017").all()
    ce = published[(published["key"] == "ce") & (published["column"] == "classification")]
    assert ce["value"].tolist() == ["56.5"]


def test_bar_chart_accepts_a_value_outside_its_interval(tmp_path):
    import pandas as pd

    from evaluation.reporting.figures import table_bars

    table = pd.DataFrame({"classification": [15.2], "classification low": [15.8], "classification high": [36.7]},
                         index=["Random Gaussian"])
    path = table_bars(tmp_path / "t2.png", table, ["classification"])
    assert path.stat().st_size > 0


def _run(init, value, *, seed=0, lr=0.001, steps_run=2500, max_steps=None, task="classification", name=None,
         finished="2024-01-01T00:00:00Z"):
    """A transfer record as the entry points write it: resolved config, schedule, `complete`."""
    config = {"profile": "unit", "lr": lr, "steps": 2500, "max_steps": max_steps, "seed": seed,
              "out": f"/somewhere/{name}", "device": "cpu", "threads": 1, "weights": init}
    record = _record(task, init, value, (value - 0.01, value + 0.01), seed=seed,
                     metric="mAP" if task == "classification" else "mAP@0.5", **schedule_fields(steps_run, 2500))
    record.update(config=config, finished=finished)
    return record


@pytest.fixture()
def mixed(tmp_path):
    """A results folder as a user leaves it: a full run over two seeds, a quick --max-steps trial of the same cell,
    a rerun with another learning rate, an old-named copy of a record, a partial-only cell and a damaged file."""
    runs = {"classify_random.json": _run("random", 0.30),
            "classify_random_s1.json": _run("random", 0.34, seed=1),
            "classify_random_quick.json": _run("random", 0.05, steps_run=20, max_steps=20),
            "classify_random_lr.json": _run("random", 0.50, lr=0.01, finished="2024-06-01T00:00:00Z"),
            "classify_ce.json": _run("ce", 0.40, finished="2024-02-01T00:00:00Z"),
            "classification_ce.json": _run("ce", 0.20),  # the same run under the old name, older
            "detect_random.json": _run("random", 0.07, steps_run=20, max_steps=20, task="detection")}
    for name, record in runs.items():
        write_record(tmp_path / name, record)
    (tmp_path / "segment_ce.json").write_text('{"task": "segmentation", "init": "ce", "val')  # cut off mid-write
    return tmp_path


def test_a_cell_combines_one_configuration_and_the_footer_names_the_rest(mixed):
    out = tables.main(["--results", str(mixed)])
    t2 = out["table2"]
    # the two seeds of the full run, nothing of the quick trial (5%) or of the lr 0.01 rerun (50%)
    assert t2.at["random", "classification"] == pytest.approx(32.0) and t2.at["random", "classification runs"] == 2
    assert t2.at["random", "classification complete"]
    assert t2.at["ce", "classification"] == pytest.approx(40.0) and t2.at["ce", "classification runs"] == 1
    # a cell with only a partial run shows it, and says so
    assert t2.at["random", "detection"] == pytest.approx(7.0) and not t2.at["random", "detection complete"]
    left = {path.rsplit("/", 1)[-1]: reason for _, path, reason in out["left_out"]}
    assert left["classify_random_quick.json"] == "partial run (20 of 2500 iterations)"
    assert left["classify_random_lr.json"] == "another configuration: lr 0.01 (shown: 0.001)"
    assert left["classification_ce.json"].startswith("an older run of the same configuration and seed 0")
    assert set(left) == {"classify_random_quick.json", "classify_random_lr.json", "classification_ce.json"}
    assert [p.rsplit("/", 1)[-1] for p, _ in out["unreadable"]] == ["segment_ce.json"]
    md = (mixed / "table2.md").read_text()
    assert "32.0 [31.0, 33.0]" in md and "5.00" not in md and "50.0" not in md
    footer = md.split("Provenance:")[1]
    assert "4 records from" in footer  # the records shown, not every file
    assert "- Random Gaussian, classification: classify_random_quick.json: partial run (20 of 2500 iterations)" \
        in footer
    assert "classify_random_lr.json: another configuration: lr 0.01 (shown: 0.001)" in footer
    assert "Partial runs shown (no complete run of the cell): Random Gaussian, detection (20 of 2500 iterations)" \
        in footer
    assert "Unreadable files (left out): segment_ce.json: not a readable result record" in footer
    assert "Unreadable files (left out): segment_ce.json" in (mixed / "table1.md").read_text()


def test_the_choice_does_not_depend_on_file_order(mixed):
    records, _, _ = load_records(mixed)
    random_cls = [r for r in records if r["init"] == "random" and r["task"] == "classification"]
    kept, left_out = select(random_cls)
    kept_again, left_again = select(random_cls[::-1])
    assert [r["_path"] for r in kept] == [r["_path"] for r in kept_again]
    assert sorted(r["_path"] for r, _ in left_out) == sorted(r["_path"] for r, _ in left_again)
    # with one seed each, two complete configurations tie on seeds: the newest run wins
    lr_rerun = next(r for r in random_cls if r["config"]["lr"] == 0.01)
    seed0 = next(r for r in random_cls if r["config"]["lr"] == 0.001 and r["seed"] == 0 and r["complete"])
    assert select([seed0, lr_rerun])[0] == [lr_rerun]


def test_records_of_older_versions_without_complete_are_judged_by_their_config():
    old = _record("classification", "random", 0.1, (0.0, 0.2))
    old["config"] = {"steps": 2500, "max_steps": 20}
    assert not is_complete(old)
    old["config"]["max_steps"] = 5000  # a cap beyond the schedule cuts nothing
    assert is_complete(old)
    assert is_complete(_record("classification", "random", 0.1, (0.0, 0.2)))


def test_schedule_fields_mark_runs_and_weights_cut_short():
    assert schedule_fields(2500, 2500) == {"complete": True, "schedule": {"unit": "iterations", "steps_run": 2500,
                                                                          "steps": 2500}}
    assert not schedule_fields(20, 2500)["complete"]
    partial_ce = schedule_fields(2500, 2500, weights_meta={"steps": 20, "total_steps": 1500})
    assert not partial_ce["complete"] and partial_ce["schedule"]["pretraining"] == {"steps_run": 20, "steps": 1500}
    assert schedule_fields(2500, 2500, weights_meta={"gaussian_std": 0.01})["complete"]  # random init: no schedule


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
    # the paper's row order, then ours; Zhang et al. 2017's published rows stand also without a run of ours
    assert list(t3.index) == ["supervised", "random", "kmeans", "autoencoder", "ce", "ce-untrained",
                              "lab-autoencoder"]
    assert t3.at["kmeans", "conv3 paper:ImageNet top-1, paper"] == pytest.approx(24.5)
    assert t3.at["random", "conv1 paper:Places top-1, paper"] == pytest.approx(15.7)
    assert pd.isna(t3.at["kmeans", "conv3"]) and pd.isna(t3.at["autoencoder", "conv1 paper:ImageNet top-1, paper"])
    assert t3.at["random", "conv1"] == pytest.approx(18.0) and t3.at["random", "conv1 runs"] == 2  # seeds averaged
    assert t3.at["ce", "conv5"] == pytest.approx(13.4) and t3.at["ce", "conv5 low"] == pytest.approx(11.4)
    assert t3.at["autoencoder", "row"] == "Autoencoder"
    assert t3.at["ce-untrained", "row"].startswith("Context encoder, untrained")
    md = (results / "table3.md").read_text()
    assert "| conv1 (ours)" in md and "14.3 [12.3, 16.3]" in md and "(paper)" not in md
    assert "conv1 (ImageNet top-1, paper)" in md and "compare the orderings" in md and "CVPR 2017, Table 3" in md
    csv = pd.read_csv(results / "table3.csv", index_col="key")
    assert csv.at["autoencoder", "conv3"] == pytest.approx(16.0)
    assert (results / "table3.png").stat().st_size > 0
    # probe records stay out of Table 2, whose rows are the paper's and whose columns are the transfer tasks
    assert not any(c.startswith("probe") for c in out["table2"].columns)
    assert pd.isna(out["table2"].at["autoencoder", "classification"])
    assert out["table2"].at["kmeans", "classification paper"] == pytest.approx(56.6)  # Zhang et al. 2017, Table 4


def test_table3_keeps_the_svm_probe_in_rows_of_its_own(results):
    svm = _probe("kmeans", [30.0, 31.0, 32.0, 33.0, 34.0])
    svm["protocol"]["classifier"] = "svm"
    write_record(results / "probe_kmeans.json", _probe("kmeans", [20.0, 21.0, 22.0, 23.0, 24.0]))
    write_record(results / "probe_kmeans_svm.json", svm)
    t3 = tables.main(["--results", str(results)])["table3"]
    assert t3.at["kmeans", "conv1"] == pytest.approx(20.0) and t3.at["kmeans", "conv1 runs"] == 1
    assert t3.at["kmeans:svm", "conv1"] == pytest.approx(30.0) and t3.at["kmeans:svm", "conv1 runs"] == 1
    assert t3.at["kmeans:svm", "row"] == "Krähenbühl et al. (k-means init) (VOC07 SVM)"
    assert pd.isna(t3.at["kmeans:svm", "conv1 paper:ImageNet top-1, paper"])  # published: logistic-style probes


def _in_thread(fn, timeout=120):
    """fn() in a daemon thread: a call that blocks forever (a FIFO opened for reading) fails the test, not CI."""
    box = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as err:  # noqa: BLE001  (re-raised in the test's thread)
            box["error"] = err

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout)
    assert not worker.is_alive(), "blocked (reading a FIFO?)"
    if "error" in box:
        raise box["error"]
    return box["value"]


def test_hostile_files_named_json_are_unreadable_and_left_out(results, monkeypatch, tmp_path_factory):
    (results / "deep.json").write_text("[" * 200_000 + "]" * 200_000)  # a RecursionError in json's parser
    (results / "deepish.json").write_text('{"task": "retrieval", "x": ' + "[" * 100 + "]" * 100 + "}")
    os.mkfifo(results / "pipe.json")  # would block a plain open() until a writer comes
    os.mkfifo(results / "stage.stamp")  # the report reads run_all.sh's stamps too
    out = _in_thread(lambda: tables.main(["--results", str(results)]))
    reasons = {Path(p).name: why for p, why in out["unreadable"]}
    assert set(reasons) == {"deep.json", "deepish.json", "pipe.json"}
    assert "nested deeper than 64 levels" in reasons["deep.json"] and "nested deeper" in reasons["deepish.json"]
    assert "not a regular file" in reasons["pipe.json"]
    assert out["table2"].loc["ce", "classification"] == pytest.approx(40.0)  # the good records still count
    assert "pipe.json: not a readable result record (not a regular file)" in (results / "table2.md").read_text()
    (results / "big.json").write_text(json.dumps({"task": "classification", "pad": "x" * 5000}))
    monkeypatch.setattr("cebench.files.MAX_JSON_BYTES", 4096)  # records are ~2 kB; the real bound is 64 MiB
    reasons = {Path(p).name: why for p, why in tables.main(["--results", str(results)])["unreadable"]}
    assert "above the limit of 4,096" in reasons["big.json"]
    html = tmp_path_factory.mktemp("report") / "report.html"
    _in_thread(lambda: report.main(["--results", str(results), "--out", str(html)]))
    assert html.stat().st_size > 0


def _profiled(profile, value, dataset):
    record = _record("classification", "random", value, (value - 0.01, value + 0.01))
    record.update(config={"profile": profile}, dataset=dataset)
    return record


def test_a_table_shows_one_profile_and_names_the_records_of_others(tmp_path):
    folder = tmp_path / "smoke"
    write_record(folder / "classify_random.json", _profiled("smoke", 0.395, "VOC2007 (synthetic)"))
    write_record(folder / "classify_ce.json", _record("classification", "ce", 0.41, (0.40, 0.42)) | {
        "config": {"profile": "smoke"}, "dataset": "VOC2007 (synthetic)"})
    write_record(folder / "classify_random_voc.json", _profiled("voc-mini", 0.319, "VOC2007"))  # real VOC val
    out = tables.main(["--results", str(folder)])
    assert out["profile"] == "smoke"
    assert out["table2"].loc["random", "classification"] == pytest.approx(39.5)
    assert out["table2"].loc["random", "classification runs"] == 1  # the voc-mini record is not in the cell
    assert [(Path(p).name, name) for p, name in out["other_profiles"]] == [("classify_random_voc.json", "voc-mini")]
    md = (folder / "table2.md").read_text()
    assert "Other profiles (left out" in md and "classify_random_voc.json (profile voc-mini)" in md
    assert "VOC2007 (synthetic)" in md and "on VOC2007 val" not in md
    # an explicit --profile chooses the other one, whatever the folder's name
    other = tables.main(["--results", str(folder), "--profile", "voc-mini", "--out", str(tmp_path / "t")])
    assert other["table2"].loc["random", "classification"] == pytest.approx(31.9)
    assert {Path(p).name for p, _ in other["other_profiles"]} == {"classify_random.json", "classify_ce.json"}


def test_a_failure_while_writing_leaves_the_previous_tables_whole(results, monkeypatch):
    write_record(results / "probe_ce.json", _probe("ce", [20.0, 30.0]))
    tables.main(["--results", str(results)])
    names = ("table1.csv", "table1.md", "table2.csv", "table2.md", "table2.png", "table3.csv", "table3.md")
    before = {n: (results / n).read_bytes() for n in names}
    write_record(results / "classification_random_s2.json", _record("classification", "random", 0.9, (0.8, 1.0),
                                                                     seed=2))
    real = tables.atomic_write_text

    def disk_full_at_table1_md(path, text):
        if Path(path).name == "table1.md":
            raise CebenchError(f"cannot write {path}: No space left on device")
        return real(path, text)

    monkeypatch.setattr(tables, "atomic_write_text", disk_full_at_table1_md)
    with pytest.raises(CebenchError, match="No space left"):
        tables.main(["--results", str(results)])
    assert {n: (results / n).read_bytes() for n in names} == before  # table2 was not replaced alone
    assert not list(results.glob(".staged.*"))  # no temporary folder left behind
    monkeypatch.setattr(tables, "atomic_write_text", real)
    (results / "probe_ce.json").unlink()  # no probe records now: the old Table 3 goes, the set stays one run's
    out = tables.main(["--results", str(results)])
    assert out["table3"] is None and not (results / "table3.md").exists() and not (results / "table3.csv").exists()
    assert (results / "table2.md").read_bytes() != before["table2.md"]
