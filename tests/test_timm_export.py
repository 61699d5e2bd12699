"""timm models (registry, pretrained_cfg, feature API, ce.pt through timm's loader) and `python -m pretrain.export`.

Features are compared with torch.equal: the same modules run the same kernels on the same input with the same
thread count (conftest pins 1), so the suite's loader, timm and torchvision must agree to the last bit.
"""

import pytest
import timm
import torch
import torchvision

import pretrain  # noqa: F401  (registers the models)
from cebench.errors import CebenchError
from pretrain.export import main as export_main
from pretrain.model import AlexNetEncoder, ContextEncoder
from pretrain.timm_models import checkpoint_filter_fn
from pretrain.weights import load_encoder, save_checkpoint


def _ce_pt(path, arch="caffenet", width=0.25, input_size=64, pool_free=False):
    torch.manual_seed(0)
    model = ContextEncoder(AlexNetEncoder(arch=arch, width=width, pool_free=pool_free), input_size=input_size)
    return save_checkpoint(path, model, {"steps": 1, "input_size": input_size})


def _from_ce(path, name="cebench_caffenet", **kwargs):
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs).eval()


@pytest.fixture
def ce_pt(tmp_path):
    return _ce_pt(tmp_path / "ce.pt")


def test_registered_with_pretrained_cfg_and_feature_info():
    assert {"cebench_caffenet", "cebench_alexnet"} <= set(timm.list_models("cebench_*"))
    model = timm.create_model("cebench_caffenet").eval()
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 227, 227) and cfg["first_conv"] == "features.0"
    assert cfg["mean"] == (0.485, 0.456, 0.406) and cfg["std"] == (0.229, 0.224, 0.225)
    assert timm.data.resolve_data_config({}, model=model)["input_size"] == (3, 227, 227)
    info = model.feature_info
    assert [f["num_chs"] for f in info] == [96, 256, 384, 384, 256, 256]  # conv1..conv5, pool5
    assert [f["reduction"] for f in info] == [4, 8, 16, 16, 16, 32]
    with torch.no_grad():
        assert model.forward_features(torch.zeros(1, 3, 227, 227)).shape == (1, 256, 6, 6)
    alexnet = timm.create_model("cebench_alexnet", num_classes=5)
    assert alexnet.pretrained_cfg["input_size"] == (3, 224, 224)
    assert [f["num_chs"] for f in alexnet.feature_info][:5] == [64, 192, 384, 256, 256]
    assert alexnet(torch.zeros(2, 3, 64, 64)).shape == (2, 5)


def test_features_only_gives_conv1_to_conv5(ce_pt):
    feats = timm.create_model("cebench_caffenet", features_only=True, pretrained=True,
                              pretrained_cfg_overlay={"file": str(ce_pt)})
    with torch.no_grad():
        maps = feats(torch.randn(2, 3, 64, 64))
    assert [m.shape[1] for m in maps] == feats.feature_info.channels() == [24, 64, 96, 96, 64]
    assert feats.feature_info.reduction() == [4, 8, 16, 16, 16]
    assert [m.shape[-1] for m in maps] == [14, 7, 3, 3, 3]  # 64 px: conv1 (64-11)/4+1, ceil pools as Caffe


def test_ce_pt_loads_weights_only_through_timm_with_identical_pool5(ce_pt, monkeypatch):
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    model = _from_ce(ce_pt)
    assert calls and all(w is True for w in calls)  # ours (reading the trunk settings) and timm's loader
    # from the file
    assert model.constructor_args() == {"arch": "caffenet", "pool_free": False, "width": 0.25, "lrn": "caffe-range"}
    assert model.pretrained_cfg["input_size"] == (3, 64, 64) and model.pretrained_cfg["file"] == str(ce_pt)
    encoder, _ = load_encoder(ce_pt)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.forward_features(x), encoder.eval().forward_features(x))
        assert model(x).shape == (3, 64)  # no head: globally pooled pool5


def test_ce_pt_with_a_new_head_and_checkpoint_path(ce_pt):
    model = _from_ce(ce_pt, num_classes=20)
    assert model.get_classifier().out_features == 20
    same = timm.create_model("cebench_caffenet", width=0.25, checkpoint_path=str(ce_pt)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(same.forward_features(x), model.forward_features(x))


def test_mismatched_trunks_are_refused_in_one_line(tmp_path, ce_pt):
    with pytest.raises(CebenchError, match="width=0.25") as err:
        timm.create_model("cebench_caffenet", checkpoint_path=str(ce_pt))  # the model's default width is 1
    assert "\n" not in str(err.value)
    with pytest.raises(CebenchError, match="cebench_caffenet"):
        _from_ce(ce_pt, name="cebench_alexnet")


def test_torchvision_state_dict_loads_through_the_filter():
    source = timm.create_model("cebench_alexnet")
    state = {k: v.clone() for k, v in source.state_dict().items()} | {"classifier.6.weight": torch.zeros(3, 4)}
    target = timm.create_model("cebench_alexnet")
    target.load_state_dict(checkpoint_filter_fn(state, target), strict=True)
    assert torch.equal(target.features[0].weight, source.features[0].weight)


def test_export_timm_round_trip(tmp_path, ce_pt):
    out = tmp_path / "ce_timm.pth"
    result = export_main([str(ce_pt), "--format", "timm", "--out", str(out)])
    assert "width=0.25" in result["usage"]
    state = torch.load(out, weights_only=True)
    model = timm.create_model("cebench_caffenet", width=0.25).eval()
    model.load_state_dict(state, strict=True)
    encoder, _ = load_encoder(ce_pt)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.forward_features(x), encoder.eval().forward_features(x))
    safe = tmp_path / "ce_timm.safetensors"
    export_main([str(ce_pt), "--format", "timm", "--out", str(safe)])
    loaded = timm.create_model("cebench_caffenet", width=0.25, checkpoint_path=str(safe)).eval()
    with torch.no_grad():
        assert torch.equal(loaded.forward_features(x), encoder.forward_features(x))


def test_export_torchvision_round_trip(tmp_path):
    ce = _ce_pt(tmp_path / "tv.pt", arch="torchvision", width=1.0, input_size=64)
    out = tmp_path / "alexnet_features.pth"
    export_main([str(ce), "--format", "torchvision", "--out", str(out)])
    features = torchvision.models.alexnet().features.eval()
    features.load_state_dict(torch.load(out, weights_only=True), strict=True)
    timm_model = _from_ce(ce, name="cebench_alexnet")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(features(x), timm_model.forward_features(x))


def test_export_refusals(tmp_path, ce_pt):
    out = tmp_path / "x.pth"
    with pytest.raises(CebenchError, match="CaffeNet trunk .*96-channel conv1.*--format timm") as err:
        export_main([str(ce_pt), "--format", "torchvision", "--out", str(out)])
    assert "\n" not in str(err.value) and str(ce_pt) in str(err.value) and not out.exists()
    narrow = _ce_pt(tmp_path / "narrow.pt", arch="torchvision", width=0.5)
    with pytest.raises(CebenchError, match="width 0.5"):
        export_main([str(narrow), "--format", "torchvision", "--out", str(out)])
    out.write_bytes(b"keep me")
    with pytest.raises(CebenchError, match="exists; pass --overwrite"):
        export_main([str(ce_pt), "--format", "timm", "--out", str(out)])
    assert out.read_bytes() == b"keep me"
    export_main([str(ce_pt), "--format", "timm", "--out", str(out), "--overwrite"])
    assert set(torch.load(out, weights_only=True)) == set(load_encoder(ce_pt)[0].state_dict())
    with pytest.raises(CebenchError, match="is the ce.pt itself"):
        export_main([str(ce_pt), "--format", "timm", "--out", str(ce_pt), "--overwrite"])


def test_exports_carry_their_configuration(tmp_path, ce_pt):
    import json

    from safetensors import safe_open

    safe = tmp_path / "e.safetensors"
    export_main([str(ce_pt), "--format", "timm", "--out", str(safe)])
    with safe_open(str(safe), "pt") as f:
        stored = json.loads(f.metadata()["cebench"])
    beside = json.loads((tmp_path / "e.safetensors.config.json").read_text())
    assert stored == beside
    assert {k: stored[k] for k in ("arch", "width", "pool_free", "input_size", "timm_model")} == {
        "arch": "caffenet", "width": 0.25, "pool_free": False, "input_size": [3, 64, 64],
        "timm_model": "cebench_caffenet"}
    assert stored["mean"] == [0.485, 0.456, 0.406] and stored["std"] == [0.229, 0.224, 0.225]
    assert stored["output"].startswith("pool5 (N, 64, 1, 1)")  # 64 px: conv5 3x3, pool5 1x1
    # timm reads it: no width or input size to repeat (a .safetensors used to fall back to width 1, 227 px)
    model = timm.create_model("cebench_caffenet", pretrained=True, pretrained_cfg_overlay={"file": str(safe)}).eval()
    assert model.pretrained_cfg["input_size"] == (3, 64, 64) and model.constructor_args()["width"] == 0.25
    encoder, _ = load_encoder(ce_pt)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.forward_features(x), encoder.eval().forward_features(x))
    # a .pth has its configuration beside it; that file too is never silently replaced
    pth = tmp_path / "e.pth"
    export_main([str(ce_pt), "--format", "timm", "--out", str(pth)])
    other = timm.create_model("cebench_caffenet", pretrained=True, pretrained_cfg_overlay={"file": str(pth)})
    assert other.constructor_args()["width"] == 0.25
    pth.unlink()
    with pytest.raises(CebenchError, match=r"e\.pth\.config\.json exists; pass --overwrite"):
        export_main([str(ce_pt), "--format", "timm", "--out", str(pth)])


def test_pt2_export_runs_any_batch_and_refuses_another_suffix(tmp_path, ce_pt):
    with pytest.raises(CebenchError, match=r"name it \*\.pt2"):
        export_main([str(ce_pt), "--format", "pt2", "--out", str(tmp_path / "e.pth")])
    out = tmp_path / "e.pt2"
    result = export_main([str(ce_pt), "--format", "pt2", "--out", str(out)])
    assert "torch.export.load" in result["usage"]
    program = torch.export.load(str(out)).module()
    encoder, _ = load_encoder(ce_pt)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        # same kernels, same input, one thread (conftest): the exported graph gives the eager trunk's numbers
        # to float32 rounding (torch.export may fuse or reorder ops), hence a tolerance and not torch.equal
        torch.testing.assert_close(program(x), encoder.eval().forward_features(x), rtol=1e-5, atol=1e-6)
        assert program(x[:1]).shape == (1, 64, 1, 1)
