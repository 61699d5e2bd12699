"""The voc-mini-paper profile (voc-mini's data at the paper's schedules, for a GPU): its settings, and each training
stage starting and stopping cleanly under --max-steps on real voc-mini images on a CPU, labelled partial."""

import json
import os

import pytest
import torch

from cebench.config import get_profile

STEPS = {"pretrain": 100_000, "classify": 80_000, "detect": 40_000, "segment": 100_000}


def test_profile_has_the_papers_schedules_on_voc_minis_data():
    paper, ours, mini = get_profile("paper"), get_profile("voc-mini-paper"), get_profile("voc-mini")
    assert ours["common"]["voc_root"] == mini["common"]["voc_root"]
    for stage, steps in STEPS.items():
        assert ours[stage]["steps"] == paper[stage]["steps"] == steps
    optimisation = ("batch_size", "lr", "lr_step", "lr_gamma", "lr_schedule", "weight_decay", "momentum",
                    "clip_grad", "beta1", "dropout", "mask", "rois_per_image", "loss_normalization", "fc_dim",
                    "test_crops", "rescale_images", "variant", "pad", "upsampling", "crop_size", "flip_prob")
    for stage in STEPS:
        for key in optimisation:
            if key in paper[stage]:
                assert ours[stage][key] == paper[stage][key], (stage, key)
    # the 20 images of a segmentation step in one padded batch, not accumulated one by one
    assert ours["segment"]["accum_steps"] == 1 and paper["segment"]["accum_steps"] == 20
    # voc-mini's sizes and splits (its images are 224 px)
    for stage in ("pretrain", "classify", "retrieval", "inpainting", "probe"):
        assert ours[stage]["input_size"] == mini[stage]["input_size"]
    assert ours["detect"]["scale"] == mini["detect"]["scale"] and ours["classify"]["test_split"] == "val"


def _subset(root, out, n_train=16, n_val=2, n_seg=4):
    """A VOCdevkit of the first images of voc-mini's train and val (symlinks), Main and Segmentation lists."""
    src, dst = root / "VOC2007", out / "VOC2007"
    for kind in ("Main", "Segmentation"):
        (dst / "ImageSets" / kind).mkdir(parents=True)
    for folder in ("JPEGImages", "Annotations", "SegmentationClass"):
        (dst / folder).mkdir()
    for split, n in (("train", n_train), ("val", n_val)):
        seg = (src / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()[:n_seg]
        main = list(dict.fromkeys(seg + (src / "ImageSets" / "Main" / f"{split}.txt").read_text().split()[:n]))
        (dst / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(main) + "\n")
        (dst / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(seg) + "\n")
        for i in main:
            os.symlink(src / "JPEGImages" / f"{i}.jpg", dst / "JPEGImages" / f"{i}.jpg")
            os.symlink(src / "Annotations" / f"{i}.xml", dst / "Annotations" / f"{i}.xml")
        for i in seg:
            os.symlink(src / "SegmentationClass" / f"{i}.png", dst / "SegmentationClass" / f"{i}.png")
    return out


@pytest.mark.integration
@pytest.mark.slow  # four stages at full width on real images, one step each
def test_training_stages_start_and_stop_under_max_steps(voc_mini_root, tmp_path):
    from pretrain.train import main as pretrain
    from transfer.classify import main as classify
    from transfer.detect import main as detect
    from transfer.segment import main as segment

    root = _subset(voc_mini_root, tmp_path / "voc")
    # the profile's every setting but the budget: one step, and feature health on 8 views instead of 400
    run = ["--profile", "voc-mini-paper", "--device", "cpu", "--threads", "1", "--max-steps", "1", "--health-images",
           "8"]
    # the profile's image_split and region_shapes_split (train) apply to the subset's folders
    images = ["--images", str(root / "VOC2007" / "JPEGImages"), "--region-shapes",
              str(root / "VOC2007" / "SegmentationClass")]
    pretrain([*run, *images, "--workers", "0", "--out", str(tmp_path / "ce.pt")])
    meta = torch.load(tmp_path / "ce.pt", weights_only=True)["meta"]
    assert meta["steps"] == 1
    # the transfers, from that ce.pt, fewer rescaling images than the profile's 160 (16 train images here) and fc
    # layers of 256, not 4096 (on 2 cores at load 14, 4096: 14 min for the three; 256: 3 min)
    data = ["--voc-root", str(root), "--weights", str(tmp_path / "ce.pt"), "--rescale-images", "4", "--n-boot", "200",
            "--fc-dim", "256"]
    classify([*run, *data, "--out", str(tmp_path / "cls.json")])
    # 200 proposals an image, not 2,000: at fc 4096 the test pass scores each one (~0.1 GFLOP apiece)
    detect([*run, *data, "--max-proposals", "200", "--proposals-cache", str(tmp_path / "cache"), "--out",
            str(tmp_path / "det.json")])
    segment([*run, *data, "--batch-size", "4", "--out", str(tmp_path / "seg.json")])  # 4 masks: a batch of 4
    for stage, name in (("classify", "cls"), ("detect", "det"), ("segment", "seg")):
        record = json.loads((tmp_path / f"{name}.json").read_text())
        assert record["config"]["profile"] == "voc-mini-paper" and not record["complete"], stage
        assert record["schedule"]["steps_run"] == 1 and record["config"]["steps"] == STEPS[stage], stage
        assert record["value"] is not None, stage
