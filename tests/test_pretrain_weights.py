"""ce.pt contract (DESIGN.md) and weights specs: round trip, refusals, torchvision state_dicts, random init."""

import collections

import pytest
import torch
import torchvision

from cebench.errors import CebenchError
from pretrain.model import AlexNetEncoder, ContextEncoder
from pretrain.weights import FORMAT, load_context_encoder, load_encoder, read_checkpoint, save_checkpoint


@pytest.fixture
def small_model():
    torch.manual_seed(0)
    return ContextEncoder(AlexNetEncoder(width=0.25), input_size=64)


def test_ce_round_trip_with_weights_only(tmp_path, small_model):
    path = save_checkpoint(tmp_path / "ce.pt", small_model, {"steps": 3, "mask": "random-block", "seed": 0})
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == FORMAT and isinstance(raw["version"], int)
    assert raw["arch"] == {"arch": "caffenet", "pool_free": False, "width": 0.25, "lrn": "caffe-range"}
    encoder, info = load_encoder(path)
    assert info["init"] == "ce" and info["meta"]["steps"] == 3 and info["fc"] is None
    for k, v in small_model.encoder.state_dict().items():
        assert torch.equal(encoder.state_dict()[k], v)
    model, info = load_context_encoder(path)
    x = torch.randn(2, 3, 64, 64)
    small_model.eval()
    assert torch.equal(model(x), small_model(x))


def test_encoder_only_checkpoint_has_no_decoder(tmp_path, small_model):
    path = save_checkpoint(tmp_path / "enc.pt", small_model, {}, include_decoder=False)
    load_encoder(path)
    with pytest.raises(CebenchError, match="no decoder"):
        load_context_encoder(path)


def _one_line(err):
    return "\n" not in str(err.value)


def test_refuses_pickled_payload(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "payload": collections.Counter(a=1)}, path)  # needs code to unpickle
    with pytest.raises(CebenchError, match="evil.pt") as err:
        load_encoder(path)
    assert _one_line(err)


def test_refuses_wrong_format_and_missing_keys(tmp_path, small_model):
    path = tmp_path / "other.pt"
    torch.save({"format": "something-else", "encoder": {}}, path)
    with pytest.raises(CebenchError, match="not a cebench ce.pt") as err:
        read_checkpoint(path)
    assert _one_line(err)
    torch.save({"format": FORMAT, "version": 1, "arch": {}, "meta": {}}, path)
    with pytest.raises(CebenchError, match="'encoder'"):
        read_checkpoint(path)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CebenchError, match="junk.pt"):
        load_encoder(tmp_path / "junk.pt")


def test_refuses_incompatible_shapes(tmp_path, small_model):
    path = save_checkpoint(tmp_path / "ce.pt", small_model, {})
    ckpt = torch.load(path, weights_only=True)
    ckpt["arch"]["width"] = 0.5  # weights are for width 0.25
    torch.save(ckpt, path)
    with pytest.raises(CebenchError, match="shape") as err:
        load_encoder(path)
    assert _one_line(err)


def test_torchvision_state_dict_spec(tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.alexnet(weights=None)
    path = tmp_path / "alexnet.pth"
    torch.save(tv.state_dict(), path)
    encoder, info = load_encoder(path)
    assert info["init"] == "supervised" and info["arch"]["arch"] == "torchvision"
    assert info["fc"]["fc6.weight"].shape == (4096, 9216) and info["fc"]["fc7.bias"].shape == (4096,)
    x = torch.randn(1, 3, 224, 224)
    assert torch.equal(encoder(x), tv.features(x))
    trunk = {f"module.{k}": v for k, v in tv.state_dict().items() if k.startswith("features.")}
    torch.save({"state_dict": trunk}, path)  # DDP-wrapped, trunk only
    encoder, info = load_encoder(path)
    assert torch.equal(encoder(x), tv.features(x)) and info["fc"] is None
    torch.save({"features.0.weight": torch.zeros(64, 3, 11, 11), "head.w": torch.zeros(1)}, path)
    with pytest.raises(CebenchError, match="not an AlexNet"):
        load_encoder(path)


def test_random_spec_is_seeded_gaussian():
    a, info = load_encoder("random", seed=1)
    b, _ = load_encoder("random", seed=1)
    c, _ = load_encoder("random", arch={"arch": "torchvision"}, seed=2)
    assert info["init"] == "random" and info["arch"]["arch"] == "caffenet"
    assert torch.equal(a.conv_layers()[0].weight, b.conv_layers()[0].weight)
    assert c.conv_layers()[0].out_channels == 64


def test_ce_pt_written_before_the_lrn_change_loads_with_the_lrn_it_ran(tmp_path, small_model):
    # Files without arch["lrn"] were trained with Caffe's alpha on normalised input; LRN has no weights, so they
    # load as they are and keep that convention, which the arch (and so every record) states.
    path = save_checkpoint(tmp_path / "old.pt", small_model, {})
    ckpt = torch.load(path, weights_only=True)
    del ckpt["arch"]["lrn"]
    torch.save(ckpt, path)
    encoder, info = load_encoder(path)
    assert encoder.lrn == "unscaled" and info["arch"]["lrn"] == "unscaled"
    lrn = next(m for m in encoder.modules() if isinstance(m, torch.nn.LocalResponseNorm))
    assert lrn.alpha == 1e-4
    model, info = load_context_encoder(path)
    assert info["arch"]["lrn"] == "unscaled" and small_model.encoder.lrn == "caffe-range"
