"""No silent wrong numbers: NaN/Inf weights are refused with one line naming the file, and records are strict JSON
(null with a reason where a score is undefined by design, an error for anything else)."""

import json
import math

import pytest
import torch
from test_transfer_rescale import alexnet_state_dict
from vocfactory import make_vocdevkit

from cebench.errors import CebenchError, run_cli
from cebench.files import atomic_write_json
from cebench.records import make_record, read_record, write_record
from evaluation import inpainting, retrieval, tables
from pretrain.model import AlexNetEncoder, ContextEncoder
from pretrain.weights import load_context_encoder, load_encoder, save_checkpoint
from transfer import classify

SMALL = ["--profile", "smoke", "--input-size", "64", "--width", "0.25", "--batch-size", "4", "--workers", "0",
         "--device", "cpu"]


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    return make_vocdevkit(tmp_path_factory.mktemp("voc") / "VOCdevkit", splits={"train": 8, "val": 4}, seed=3)


@pytest.fixture(scope="module")
def nan_ce(tmp_path_factory):
    """A ce.pt whose conv1 has one NaN filter (a run that diverged in one place)."""
    model = ContextEncoder(AlexNetEncoder(width=0.25), input_size=64)
    with torch.no_grad():
        model.encoder.conv_layers()[0].weight[3] = float("nan")
    return save_checkpoint(tmp_path_factory.mktemp("ce") / "nan_ce.pt", model, {"steps": 1})


def _strict_load(text):
    def refuse(name):
        raise AssertionError(f"non-strict JSON token {name}")
    return json.loads(text, parse_constant=refuse)


def _refused_with_one_line(capsys, main, argv, path):
    with pytest.raises(SystemExit) as exit_:
        run_cli(main, argv)
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]  # logging may precede it; no traceback
    assert exit_.value.code == 2 and "Traceback" not in err and line.startswith("error: "), err
    assert str(path) in line and "NaN/Inf" in line and "features.0.weight" in line


@pytest.mark.parametrize("entry", ["retrieval", "inpainting", "classify"])
def test_nan_filter_in_ce_pt_is_refused_by_every_entry_point(entry, voc, nan_ce, tmp_path, capsys):
    out = tmp_path / "record.json"
    if entry == "classify":
        argv = ["--voc-root", str(voc.root), "--train-split", "train", "--test-split", "val", "--input-size", "64",
                "--base-size", "80", "--fc-dim", "32", "--steps", "1", "--batch-size", "4", "--rescale-images", "4",
                "--device", "cpu", "--weights", str(nan_ce), "--out", str(out)]
        _refused_with_one_line(capsys, classify.main, argv, nan_ce)
    else:
        main = retrieval.main if entry == "retrieval" else inpainting.main
        _refused_with_one_line(capsys, main, [*SMALL, "--voc-root", str(voc.root), "--weights", str(nan_ce),
                                              "--out", str(out)], nan_ce)
    assert not out.exists()


def test_inf_in_a_torchvision_state_dict_is_refused(tmp_path, nan_ce):
    state = alexnet_state_dict(fc_dim=8)
    state["classifier.4.bias"][2] = float("inf")  # fc7: used by the transfers, not by the trunk
    path = tmp_path / "alexnet.pth"
    torch.save(state, path)
    with pytest.raises(CebenchError, match="alexnet.pth: AlexNet classifier weight fc7.bias holds 1 NaN/Inf"):
        load_encoder(path)
    with pytest.raises(CebenchError, match="nan_ce.pt: .*features.0.weight holds 363 NaN/Inf"):  # 3 x 11 x 11
        load_context_encoder(nan_ce)


def test_nan_decoder_is_an_error_even_when_the_decoder_is_optional(voc, tmp_path):
    path = save_checkpoint(tmp_path / "ce.pt", ContextEncoder(AlexNetEncoder(width=0.25), input_size=64), {})
    ckpt = torch.load(path, weights_only=True)
    ckpt["decoder"]["channelwise_fc.weight"][0, 0, 0] = float("nan")  # the encoder is sound
    torch.save(ckpt, path)
    with pytest.raises(CebenchError, match="ce.pt: context encoder weight .* NaN/Inf"):
        inpainting.main([*SMALL, "--voc-root", str(voc.root), "--weights", str(path), "--decoder", "auto",
                         "--out", str(tmp_path / "inpainting.json")])


def _record(**kw):
    base = dict(task="detection", init="ce", dataset="VOC2007", split="val", metric="mAP@0.5", value=0.25,
                ci95=(0.2, 0.3), per_class={"cat": 0.5, "dog": float("nan")}, n_images=4, seed=0, wall_time_s=1.0,
                config={"profile": "unit"}, protocol={})
    return make_record(**{**base, **kw})


def test_records_are_strict_json_with_reasons_for_nulls(tmp_path):
    path = write_record(tmp_path / "r.json", _record(ci95=(0.2, float("nan"))))
    record = _strict_load(path.read_text())  # no NaN/Infinity tokens
    assert record["per_class"] == {"cat": 50.0, "dog": None} and record["ci95"] == [20.0, None]
    assert "no non-difficult object" in record["null_reasons"]["per_class"] and record["null_reasons"]["ci95"]
    assert read_record(path) == record
    for bad, key in ((dict(value=float("nan")), "value is nan"), (dict(value=float("inf")), "value is inf"),
                     (dict(per_class={"cat": float("inf")}), "per_class.cat is inf"),
                     (dict(coco_ap=float("nan")), "coco_ap is nan")):
        with pytest.raises(CebenchError, match=f"bad.json: not written: {key}"):
            write_record(tmp_path / "bad.json", _record(**bad))
        assert not (tmp_path / "bad.json").exists()
    with pytest.raises(CebenchError, match=r"cfg.json: not written: a\[1\].b is nan"):
        atomic_write_json(tmp_path / "cfg.json", {"a": [1, {"b": math.nan}]})


def test_tables_show_no_number_from_a_record_with_nan(tmp_path):
    write_record(tmp_path / "detection_ce.json", _record())
    legacy = json.loads((tmp_path / "detection_ce.json").read_text())
    legacy.update(init="random", value=float("nan"))  # an older writer let NaN through as a bare token
    (tmp_path / "detection_random.json").write_text(json.dumps(legacy))
    with pytest.raises(CebenchError, match="detection_random.json: not a readable result record.*NaN"):
        read_record(tmp_path / "detection_random.json")
    out = tables.main(["--results", str(tmp_path)])
    table = (tmp_path / "table2.md").read_text()
    assert "25.0" in table or "25.00" in table
    assert out["table2"].loc["random", "detection runs"] == 0  # left out: an empty cell, never 0.00
    assert not math.isfinite(out["table2"].loc["random", "detection"])
