"""python -m transfer.classify end to end on a tiny VOCdevkit: each weights spec, probe, records, bad input."""

import json

import numpy as np
import pytest
import torch
from test_transfer_rescale import alexnet_state_dict
from vocfactory import make_vocdevkit, truncate_file

from cebench import CebenchError
from cebench.config import get_profile
from cebench.records import REQUIRED
from pretrain.model import AlexNetEncoder, ContextEncoder
from pretrain.weights import save_checkpoint
from transfer import classify
from transfer.classification.data import MEAN_RGB, ViewSpec, random_view
from transfer.classification.probe import assert_unchanged, state_fingerprint
from transfer.classification.task import voc_bce

# The tiny devkits lack some classes; their AP is nan and the metric warns, as it should.
pytestmark = pytest.mark.filterwarnings("ignore:class\\(es\\).*no positive:UserWarning")


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    return make_vocdevkit(tmp_path_factory.mktemp("voc") / "VOCdevkit", splits={"train": 12, "val": 6}, seed=2)


def tiny_args(voc, out, *extra):
    return ["--voc-root", str(voc.root), "--train-split", "train", "--test-split", "val", "--input-size", "64",
            "--base-size", "80", "--width", "0.25", "--fc-dim", "32", "--steps", "2", "--batch-size", "4",
            "--lr-step", "1", "--rescale-images", "8", "--rescale-iterations", "2", "--test-crops", "2",
            "--device", "cpu", "--out", str(out), *extra]


def check_record(path, init, probe=False):
    record = json.loads(path.read_text())
    assert all(k in record for k in REQUIRED)
    assert record["task"] == "classification" and record["init"] == init and record["metric"] == "mAP"
    assert 0 <= record["value"] <= 100 and 0 <= record["map_voc07"] <= 100
    low, high = record["ci95"]
    assert 0 <= low <= high <= 100
    assert list(record["per_class"])[:2] == ["aeroplane", "bicycle"] and len(record["per_class"]) == 20
    assert record["protocol"]["ap"].startswith("non-interpolated")
    assert record["protocol"]["mode"] == ("linear probe" if probe else "fine-tune")
    assert record["n_images"] == 6 and record["n_skipped"] == 0
    assert record["protocol"]["interval"].startswith("BCa bootstrap 95%, 1000 resamples over test images")
    # feature health of the init, on every one of the 12 training images at the input size
    health = record["feature_health"]
    assert sorted(health["dead_units"]) == [f"conv{k}" for k in range(1, 6)]
    assert health["n_images"] == 12 and health["image_size"] == 64 and "VOC2007 train" in health["images"]
    rescaled = record["protocol"]["rescaling"]["applied"]
    assert health["weights"] == ("after Krähenbühl rescaling" if rescaled else "as loaded (no rescaling)")
    assert "feature_health" not in record["protocol"]["rescaling"]  # one place in the record
    saved = np.load(record["scores_file"])
    assert saved["scores"].shape == (6, 20) and len(saved["ids"]) == 6 and np.isfinite(saved["scores"]).all()
    return record


def test_help_explains_the_flags(capsys):
    with pytest.raises(SystemExit) as exit_:
        classify.main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--weights", "--profile", "--voc-root", "--probe", "--train-split", "--max-steps", "--rescale"):
        assert flag in text


def test_random_weights_two_steps(voc, tmp_path):
    result = classify.main(tiny_args(voc, tmp_path / "random.json"))
    record = check_record(tmp_path / "random.json", "random")
    assert result["steps"] == 2 and record["protocol"]["iterations"] == 2
    assert record["protocol"]["rescaling"]["applied"] and record["protocol"]["architecture"]["width"] == 0.25
    assert (tmp_path / "random.run" / "checkpoint.pt").is_file()


def test_ce_checkpoint_two_steps(voc, tmp_path):
    model = ContextEncoder(AlexNetEncoder("caffenet", width=0.25), input_size=64)
    save_checkpoint(tmp_path / "ce.pt", model, {"steps": 7})
    classify.main(tiny_args(voc, tmp_path / "ce.json", "--weights", str(tmp_path / "ce.pt"), "--arch", "torchvision"))
    record = check_record(tmp_path / "ce.json", "ce")
    assert record["protocol"]["architecture"]["arch"] == "caffenet"  # the checkpoint's, not the flag's
    assert record["arch_requested"]["arch"] == "torchvision" and record["weights_meta"] == {"steps": 7}
    assert record["protocol"]["rescaling"]["normalised_layers"] == 3  # fc6, fc7 and fc8 (voc-classification)


def test_torchvision_state_dict_two_steps(voc, tmp_path):
    torch.save(alexnet_state_dict(), tmp_path / "alexnet.pth")
    classify.main(tiny_args(voc, tmp_path / "sup.json", "--weights", str(tmp_path / "alexnet.pth"), "--no-rescale"))
    record = check_record(tmp_path / "sup.json", "supervised")
    assert record["protocol"]["architecture"]["arch"] == "torchvision"
    assert record["protocol"]["rescaling"] == {"applied": False}


def test_probe_keeps_the_backbone_frozen(voc, tmp_path):
    classify.main(tiny_args(voc, tmp_path / "probe.json", "--probe"))
    record = check_record(tmp_path / "probe.json", "random", probe=True)
    assert record["protocol"]["layers_trained"].startswith("none")
    layer = torch.nn.Linear(2, 2)
    before = state_fingerprint(layer)
    with torch.no_grad():
        layer.weight[0, 0] += 1e-3
    with pytest.raises(CebenchError, match="frozen backbone weights changed"):
        assert_unchanged(layer, before)


class Trap:
    """Unpickling this would run code: a refused checkpoint must never get that far."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_payload_is_refused_without_running_it(voc, tmp_path):
    marker, path = tmp_path / "ran", tmp_path / "evil.pt"
    torch.save({"format": "cebench.context-encoder", "version": 1, "arch": {}, "encoder": {},
                "meta": Trap(str(marker))}, path)
    with pytest.raises(CebenchError, match=f"{path}.*refused"):
        classify.main(tiny_args(voc, tmp_path / "evil.json", "--weights", str(path)))
    assert not marker.exists() and not (tmp_path / "evil.json").exists()


def test_bad_image_fails_or_is_skipped_and_counted(tmp_path):
    voc = make_vocdevkit(tmp_path / "VOCdevkit", splits={"train": 12, "val": 6}, seed=3)
    bad = voc.splits["train"][4]
    truncate_file(voc.path("jpg", bad), 0.5)
    with pytest.raises(CebenchError, match=f"{bad}.jpg"):
        classify.main(tiny_args(voc, tmp_path / "a.json"))
    classify.main(tiny_args(voc, tmp_path / "b.json", "--skip-bad"))
    record = json.loads((tmp_path / "b.json").read_text())
    assert record["n_skipped"] == 1 and record["skipped"][0]["id"] == bad and record["n_train_images"] == 11


def test_existing_results_are_kept_unless_resumed_or_overwritten(voc, tmp_path):
    out = tmp_path / "r.json"
    classify.main(tiny_args(voc, out, "--max-steps", "1"))
    with pytest.raises(CebenchError, match="exists"):
        classify.main(tiny_args(voc, out))
    result = classify.main(tiny_args(voc, out, "--resume"))
    assert result["steps"] == 2
    rows = [json.loads(line) for line in (tmp_path / "r.run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]
    assert classify.main(tiny_args(voc, out, "--overwrite", "--max-steps", "1"))["steps"] == 1


def test_views_are_scaled_cropped_padded_and_mirrored():
    from PIL import Image

    image = Image.fromarray(np.tile(np.arange(100, dtype=np.uint8)[None, :, None], (50, 1, 3)))  # a ramp
    spec = ViewSpec(input_size=32, base_size=100, min_scale=0.2, max_scale=0.2, flip_prob=0.0)
    view = random_view(image, spec, np.random.default_rng(0))  # the image shrinks to 20x10 inside 32x32
    assert view.shape == (32, 32, 3)
    assert (view == np.array(MEAN_RGB, np.uint8)).all(axis=2).mean() > 0.7
    spec = ViewSpec(input_size=32, base_size=100, min_scale=1.0, max_scale=1.0, flip_prob=0.5)
    views = [random_view(image, spec, np.random.default_rng(s)) for s in range(8)]
    slopes = {int(np.sign(v[0, -1, 0].astype(int) - v[0, 0, 0])) for v in views}
    assert slopes == {1, -1}  # both orientations occur


def test_loss_ignores_difficult_labels():
    logits = torch.randn(3, 20, requires_grad=True)
    labels = torch.randint(-1, 2, (3, 20), dtype=torch.int8)
    voc_bce(logits, labels).backward()
    assert (logits.grad[labels == 0] == 0).all() and (logits.grad[labels != 0] != 0).all()


@pytest.mark.integration
def test_real_voc_mini_images(voc_mini_root, tmp_path):
    """A few real images through the voc-mini profile (symlinked devkit with short splits)."""
    real = voc_mini_root / "VOC2007"
    base = tmp_path / "VOCdevkit" / "VOC2007"
    (base / "ImageSets" / "Main").mkdir(parents=True)
    for folder in ("JPEGImages", "Annotations"):
        (base / folder).symlink_to(real / folder)
    ids = (real / "ImageSets" / "Main" / "train.txt").read_text().split()
    (base / "ImageSets" / "Main" / "train.txt").write_text("\n".join(ids[:24]) + "\n")
    (base / "ImageSets" / "Main" / "val.txt").write_text("\n".join(ids[24:40]) + "\n")
    result = classify.main(["--profile", "voc-mini", "--voc-root", str(tmp_path / "VOCdevkit"), "--max-steps", "2",
                            "--fc-dim", "256", "--rescale-images", "8", "--rescale-iterations", "2",
                            "--test-crops", "2", "--out", str(tmp_path / "r.json")])
    record = json.loads((tmp_path / "r.json").read_text())
    assert result["steps"] == 2 and record["n_images"] == 16
    assert record["protocol"]["views"]["input_size"] == 128 and record["protocol"]["schedule_steps"] > 2


def test_default_record_name_is_the_suites_and_a_short_run_stays_out_of_the_table(voc, tmp_path, monkeypatch):
    """Standalone and run_all.sh name a record alike; a --max-steps trial says it is partial and the table, given
    both, shows the full run and names the trial in its footer."""
    from cebench import suite
    from evaluation import tables

    # a checkout whose benchmarks.yaml lives in tmp_path: default outputs go to tmp_path/results/<profile>/
    (tmp_path / "benchmarks.yaml").write_text((suite.REPO / "benchmarks.yaml").read_text())
    monkeypatch.setenv("CEBENCH_BENCHMARKS", str(tmp_path / "benchmarks.yaml"))
    args = tiny_args(voc, "unused")[:-2]  # everything but --out
    full = classify.main(["--profile", "smoke", *args])
    jobs, results = suite.plan(get_profile("smoke"), suite.get_args_parser().parse_args(["smoke"]))
    suite_out = next(j.out for j in jobs if j.stage == "classify" and j.init == "random")
    assert full["out"] == str(suite_out) == str(tmp_path / "results" / "smoke" / "classify_random.json")
    record = json.loads(suite_out.read_text())
    assert record["complete"] and record["schedule"] == {"unit": "iterations", "steps_run": 2, "steps": 2}

    quick = results / "classify_random_quick.json"
    classify.main(["--profile", "smoke", *args, "--max-steps", "1", "--lr", "0.5", "--out", str(quick)])
    record = json.loads(quick.read_text())
    assert not record["complete"] and record["schedule"]["steps_run"] == 1
    out = tables.main(["--results", str(results)])
    assert out["table2"].at["random", "classification"] == pytest.approx(full["value"], abs=1e-3)
    assert out["table2"].at["random", "classification runs"] == 1
    assert (results / "table2.md").read_text().count("classify_random_quick.json: partial run (1 of 2 iterations)") == 1
