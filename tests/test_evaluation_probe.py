"""Per-layer linear probes (evaluation.probe): pooled shapes at 227 and 128 px, C choice, a tiny VOC end to end,
and the pretraining curve (evaluation.curve) on a tiny profile."""

import numpy as np
import pytest
import torch
from vocfactory import make_vocdevkit

from cebench.errors import CebenchError
from cebench.records import read_record
from evaluation import probe
from pretrain.model import AlexNetEncoder
from transfer.classification.probe import (LAYERS, POOL5, ZHANG_GRIDS, fit_predict, frozen_features, layer_shapes,
                                           select_c, standardise_and_rotate)

SMALL = ["--profile", "smoke", "--input-size", "64", "--width", "0.25", "--fc-dim", "32", "--base-size", "72",
         "--rescale-images", "4", "--batch-size", "4", "--workers", "0", "--device", "cpu", "--n-boot", "200",
         "--threads", "1"]


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    return make_vocdevkit(tmp_path_factory.mktemp("voc"), splits={"train": 16, "val": 8}, size=(72, 56))


@pytest.mark.parametrize("size, maps", [(227, [55, 27, 13, 13, 13]), (128, [30, 15, 7, 7, 7])])
def test_layers_pool_to_zhang_et_al_grids_of_about_9000_dims(size, maps):
    shapes = layer_shapes(AlexNetEncoder(), size)
    assert [shapes[n]["map"][1] for n in LAYERS] == maps  # conv maps after ReLU, before pooling
    dims = {n: shapes[n]["dims"] for n in LAYERS}
    assert dims == {"conv1": 96 * 10 * 10, "conv2": 256 * 6 * 6, "conv3": 384 * 5 * 5, "conv4": 384 * 5 * 5,
                    "conv5": 256 * 6 * 6}  # Zhang et al. 2016: 9,600 / 9,216 / 9,600 / 9,600 / 9,216
    assert all(shapes[n]["map"][1] >= ZHANG_GRIDS[n] for n in LAYERS)  # pooling averages, never repeats


def test_conv_features_are_pooled_relu_outputs_in_order():
    encoder = AlexNetEncoder(width=0.25).eval()
    images = torch.randint(0, 256, (3, 3, 128, 128), dtype=torch.uint8)
    feats = frozen_features(encoder, [(images, None)], "cpu")
    assert [feats[n].shape for n in LAYERS] == [(3, 24 * 100), (3, 64 * 36), (3, 96 * 25), (3, 96 * 25),
                                                (3, 64 * 36)]
    assert all((f >= 0).all() for f in feats.values())  # averages of ReLU outputs
    # conv1 by hand: the first conv and its ReLU, averaged over the cells of a 10x10 grid (30 px -> 3 px cells)
    from pretrain.data import normalize

    with torch.no_grad():
        conv1 = torch.relu(encoder.conv_layers()[0](normalize(images, "cpu")))  # (3, 24, 30, 30)
    by_hand = conv1.view(3, 24, 10, 3, 10, 3).mean(dim=(3, 5)).flatten(1)
    # tolerance: the same sums in another order (float32)
    np.testing.assert_allclose(feats["conv1"], by_hand.numpy(), rtol=1e-5, atol=1e-6)


def test_views_of_an_item_are_averaged_or_kept_as_rows_in_one_pass_with_pool5():
    encoder = AlexNetEncoder(width=0.25).eval()
    views = torch.randint(0, 256, (2, 3, 3, 64, 64), dtype=torch.uint8)  # 2 items x 3 views
    layers = {POOL5: None, "conv2": 2}
    rows = frozen_features(encoder, [(views, None)], "cpu", layers, average_views=False)
    flat = frozen_features(encoder, [(views.flatten(0, 1), None)], "cpu", layers)  # the same 6 images, one view each
    assert all(np.array_equal(rows[n], flat[n]) for n in layers) and rows["conv2"].shape == (6, 64 * 4)
    from pretrain.data import normalize

    with torch.no_grad():
        pool5 = encoder.forward_features(normalize(views[1, 2:], "cpu")).flatten(1)
    # item-major: item 1's third view is the sixth row (tolerance: a batch of 1, not 6, may take another kernel)
    np.testing.assert_allclose(rows[POOL5][5:], pool5.numpy(), rtol=1e-5, atol=1e-6)
    averaged = frozen_features(encoder, [(views, None)], "cpu", layers)
    for n in layers:  # tolerance: a float32 mean of three rows, computed by torch against numpy
        np.testing.assert_allclose(averaged[n], rows[n].reshape(2, 3, -1).mean(axis=1), rtol=1e-5, atol=1e-6)


def test_select_c_prefers_the_value_that_generalises():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((120, 40)).astype(np.float32)
    labels = np.where(x[:, :2] + 0.3 * rng.standard_normal((120, 2)) > 0, 1, -1)  # two classes, linear in x
    c, scores = select_c(x, labels, [1e-4, 1.0], held_out=0.25, seed=0)
    assert set(scores) == {1e-4, 1.0} and c == max(scores, key=scores.get)
    assert scores[1.0] > 0.9  # a separable problem is learnt


def test_rotation_onto_the_training_span_leaves_the_probe_unchanged():
    rng = np.random.default_rng(1)
    x, x_test = rng.standard_normal((60, 200)).astype(np.float32), rng.standard_normal((30, 200)).astype(np.float32)
    labels = np.where(x[:, :3] + 0.5 * rng.standard_normal((60, 3)) > 0, 1, -1)
    labels[0, 0] = 0  # a difficult image, left out of that class's fit
    plain = fit_predict(x, labels, x_test, c=0.05, max_iter=5000)
    z, z_test = standardise_and_rotate(x, x_test)
    assert z.shape == (60, 60) and z_test.shape == (30, 60)  # N < D: N coordinates
    rotated = fit_predict(z, labels, z_test, c=0.05, max_iter=5000, standardize=False, n_jobs=2)
    # the same optimum up to L-BFGS's tolerance and float32 rounding of the rotation
    np.testing.assert_allclose(rotated, plain, atol=2e-3 * np.abs(plain).max())


def test_probe_main_on_a_tiny_voc(voc, tmp_path):
    out = tmp_path / "probe_random.json"
    result = probe.main([*SMALL, "--voc-root", str(voc.root), "--train-split", "train", "--test-split", "val",
                         "--weights", "random", "--cs", "0.001", "0.1", "--out", str(out)])
    record = read_record(out)
    assert record["task"] == "probe" and record["init"] == "random" and record["metric"] == "mAP"
    assert list(record["layers"]) == list(LAYERS) and record["layer"] == "conv5"
    assert record["protocol"]["interval"].startswith("BCa bootstrap 95%, 200 resamples")  # --n-boot 200
    for cell in record["layers"].values():
        assert 0 <= cell["value"] <= 100 and cell["c"] in (1e-3, 1e-1) and len(cell["held_out_map"]) == 2
        assert set(cell["per_class"]) >= {"aeroplane", "person"}
    assert record["value"] == pytest.approx(record["layers"]["conv5"]["value"])
    assert record["protocol"]["rescaling"]["applied"] and record["protocol"]["layers"]["conv1"]["pooled"][1:] == \
        [10, 10]
    assert record["n_images"] == 8 and record["n_train_images"] == 16
    assert result["layers"]["conv1"][0] == record["layers"]["conv1"]["value"]
    # deterministic under the seed: a rerun gives the same numbers to the last digit
    again = probe.main([*SMALL, "--voc-root", str(voc.root), "--train-split", "train", "--test-split", "val",
                        "--weights", "random", "--cs", "0.001", "0.1", "--out", str(out), "--overwrite",
                        "--layers", "conv1", "conv2"])
    assert again["layers"]["conv2"] == result["layers"]["conv2"]
    assert record["precision"] == "fp32"  # the smoke profile's
    # bfloat16 arithmetic (--precision): the record says so and the features stay float32 for the probes
    bf16 = tmp_path / "probe_bf16.json"
    probe.main([*SMALL, "--voc-root", str(voc.root), "--train-split", "train", "--test-split", "val",
                "--weights", "random", "--cs", "0.001", "--layers", "conv1", "--precision", "bf16", "--out", str(bf16)])
    assert read_record(bf16)["precision"] == "bf16" and 0 <= read_record(bf16)["layers"]["conv1"]["value"] <= 100
    with pytest.raises(CebenchError, match="exists"):
        probe.main([*SMALL, "--voc-root", str(voc.root), "--weights", "random", "--out", str(out)])
    with pytest.raises(CebenchError, match="--cs"):
        probe.main([*SMALL, "--voc-root", str(voc.root), "--cs", "0", "--out", str(tmp_path / "x.json")])


TINY_PROFILE = """
default_profile: tiny
profiles:
  tiny:
    description: A tiny curve on a tiny VOC.
    common: {{voc_root: {root}, seed: 0, device: cpu}}
    pretrain: {{images: {root}/VOC2007/JPEGImages, image_split: train, width: 0.25, input_size: 64, load_size: 72,
               mask: random-block, batch_size: 4, steps: 8, lr: 1.0e-3, ckpt_every: 4, workers: 0, no_figures: true}}
    probe: {{train_split: train, test_split: val, width: 0.25, input_size: 64, fc_dim: 32, base_size: 72,
            rescale_images: 4, cs: [1.0e-2], n_boot: 200, batch_size: 8, workers: 0, threads: 1}}
    curve: {{loss_split: val, batch_size: 8, fractions: [0.0, 0.5, 1.0]}}
    run: {{stages: {{tables: {{}}}}}}
"""


def test_curve_end_to_end_on_a_tiny_profile(voc, tmp_path, monkeypatch):
    from evaluation import curve

    (tmp_path / "benchmarks.yaml").write_text(TINY_PROFILE.format(root=voc.root))
    monkeypatch.setenv("CEBENCH_BENCHMARKS", str(tmp_path / "benchmarks.yaml"))
    out = tmp_path / "curve"
    result = curve.main(["--out-dir", str(out), "--threads", "1"])
    table = result["table"]
    assert list(table["step"]) == [0, 4, 8] and list(table["images_seen"]) == [0, 16, 32]
    assert list(table["fraction"]) == [0.0, 0.5, 1.0] and (table["loss_images"] == 8).all()
    assert np.isfinite(table["val_inpainting_l2"]).all() and (table["val_inpainting_l2"] > 0).all()
    assert all(((table[n] >= 0) & (table[n] <= 100)).all() for n in LAYERS)
    for step in (0, 4, 8):
        assert (out / f"ce.step{step}.pt").is_file() and read_record(out / f"probe_step{step}.json")["init"] == \
            f"ce-step{step}"
    assert (out / "curve.png").stat().st_size > 0 and (out / "curve.csv").read_text().startswith("step,")
    # a second run reuses the checkpoints and probe records: the same table, nothing retrained
    mtime = (out / "ce.step8.pt").stat().st_mtime_ns
    again = curve.main(["--out-dir", str(out), "--threads", "1"])
    assert again["table"].equals(table) and (out / "ce.step8.pt").stat().st_mtime_ns == mtime


def test_probe_main_svm_on_kmeans_names_its_protocol(voc, tmp_path):
    out = tmp_path / "probe_kmeans_svm.json"
    probe.main([*SMALL, "--voc-root", str(voc.root), "--train-split", "train", "--test-split", "val",
                "--weights", "kmeans", "--classifier", "svm", "--svm-costs", "0.1", "1.0", "--layers", "conv1",
                "conv5", "--out", str(out)])
    record = read_record(out)
    assert record["init"] == "kmeans" and record["weights_meta"]["init_label"] == "kmeans"
    assert record["weights_meta"]["n_images"] == 16 and "MiniBatchKMeans" in record["weights_meta"]["method"]
    protocol = record["protocol"]
    assert protocol["classifier"] == "svm" and "Goyal" in protocol["benchmark"] and "3-fold" in protocol["c_choice"]
    assert protocol["svm_settings"]["class_weight"] == {"1": 2, "-1": 1}
    for cell in record["layers"].values():
        assert 0 <= cell["value"] <= 100 and set(cell["cost_per_class"].values()) <= {0.1, 1.0}
