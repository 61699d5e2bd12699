"""--precision: resolution per device, bf16 steps that keep float32 weights and losses, records and checkpoints that
say what ran, and the speed benchmarks' per-precision table."""

import json

import pytest
import torch
from torch import nn

from cebench import runtime as rt_mod
from cebench.errors import CebenchError
from cebench.records import make_record
from cebench.runtime import Runtime, cpu_flags, cpu_has_native_bf16, init_distributed, resolve_precision
from cebench.speed import Bench, benchmark_precisions, measure, summarize, table
from pretrain import loop
from transfer import engine

BF16_CPU = Runtime(device=torch.device("cpu"), precision="bf16")


def test_auto_on_this_cpu_follows_its_bf16_support():
    expected = "bf16" if cpu_has_native_bf16() else "fp32"
    assert resolve_precision("auto", "cpu") == expected
    assert init_distributed("cpu", "auto").precision == expected
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"  # asked for explicitly: emulated where not native


def test_auto_on_a_cpu_without_bf16_is_fp32(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(rt_mod, "cpu_flags", lambda: {"sse2", "avx2", "avx512f"})  # AVX512 but no BF16
    assert not cpu_has_native_bf16()
    assert resolve_precision("auto", "cpu") == "fp32"
    monkeypatch.setattr(rt_mod, "cpu_flags", lambda: {"fp", "asimd", "bf16"})  # an Arm CPU with BF16
    assert resolve_precision("auto", "cpu") == "bf16"


@pytest.mark.parametrize("capability, expected", [((7, 0), "fp16"), ((7, 5), "fp16"), ((8, 0), "bf16"),
                                                  ((8, 6), "bf16"), ((9, 0), "bf16")])
def test_auto_on_cuda_is_bf16_from_capability_8_else_fp16(monkeypatch, capability, expected):
    # V100 (7.0) and T4 (7.5) emulate bfloat16: fp16 with a scaler; A100 (8.0), RTX 30xx (8.6), H100 (9.0): bf16
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: capability)
    assert resolve_precision("auto", "cuda") == expected
    made = {}
    monkeypatch.setattr(torch.amp, "GradScaler", lambda device, enabled: made.update(device=device, enabled=enabled))
    Runtime(device=torch.device("cuda"), precision=expected).grad_scaler()
    assert made == {"device": "cuda", "enabled": expected == "fp16"}  # bf16: float32's exponent range, no scaler


def test_bf16_on_cuda_needs_support(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with pytest.raises(CebenchError, match="bfloat16"):
        resolve_precision("bf16", "cuda")
    with pytest.raises(CebenchError, match="unknown precision"):
        resolve_precision("fp8", "cpu")


def test_cpu_flags_reads_x86_and_arm_lines(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16\n\nFeatures\t: fp asimd bf16\n")
    assert {"avx512_bf16", "bf16", "asimd"} <= cpu_flags(info)
    assert cpu_flags(tmp_path / "missing") == set()


def test_autocast_and_scaler_per_precision():
    x, layer = torch.randn(2, 4), nn.Linear(4, 3)
    with BF16_CPU.autocast():
        assert layer(x).dtype == torch.bfloat16
    with Runtime(device=torch.device("cpu")).autocast():
        assert layer(x).dtype == torch.float32
    assert not BF16_CPU.grad_scaler().is_enabled()  # bf16 keeps float32's exponent range: no loss scaling
    assert Runtime(device=torch.device("cpu"), precision="fp16").grad_scaler().is_enabled()


def tiny_pretrain_cfg():
    return {"arch": "caffenet", "pool_free": False, "width": 0.25, "input_size": 64, "dropout": 0.5,
            "decoder_width": 0.25, "lr": 1.0e-3, "beta1": 0.5, "weight_decay": 0.0, "adv_weight": 0.0, "seed": 0,
            "overlap": 0, "overlap_weight": 10.0, "lr_schedule": "constant", "steps": 10, "mask": "central"}


def test_bf16_pretraining_step_keeps_float32_weights_loss_and_adam_state():
    trainer = loop.Trainer(tiny_pretrain_cfg(), BF16_CPU)
    seen = []
    trainer.model.mix.register_forward_hook(lambda m, i, out: seen.append(out.dtype))  # a 1x1 conv mid-model
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    masks = torch.zeros(2, 1, 64, 64, dtype=torch.bool)
    masks[..., 16:48, 16:48] = True
    before = [p.detach().clone() for p in trainer.model.parameters()]
    loss = trainer.step(images, masks, 0)
    assert seen == [torch.bfloat16]  # the forward pass did run in bfloat16
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert any(not torch.equal(a, p) for a, p in zip(before, trainer.model.parameters(), strict=True))
    moments = [s["exp_avg"] for s in trainer.opt.state.values()]
    assert moments and all(m.dtype == torch.float32 for m in moments)


class LinearTask:
    """A linear regression whose loss the engine runs under the runtime's autocast."""

    def __init__(self):
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(16, 8, generator=gen)
        self.train_dataset = torch.utils.data.TensorDataset(x, x.sum(dim=1, keepdim=True))
        self.dtypes = []

    def training_step(self, model, batch):
        x, y = batch
        out = model(x)
        self.dtypes.append(out.dtype)
        return (out.float() - y).pow(2).mean()

    def evaluate(self, model):
        return {}


def test_engine_runs_bf16_keeps_float32_weights_and_records_precision(tmp_path):
    task, model = LinearTask(), nn.Linear(8, 1)
    config = engine.TrainConfig(steps=3, batch_size=4, lr=0.01, checkpoint_every=10, seed=0)
    result = engine.fit(task, model, config, tmp_path / "run", BF16_CPU)
    assert set(task.dtypes) == {torch.bfloat16} and result.precision == "bf16"
    assert model.weight.dtype == torch.float32
    saved = torch.load(tmp_path / "run" / engine.CHECKPOINT_NAME, weights_only=True)
    assert saved["precision"] == "bf16"
    more = engine.TrainConfig(steps=6, batch_size=4, lr=0.01, checkpoint_every=10, seed=0)
    with pytest.raises(CebenchError, match="precision bf16 -> fp32"):  # a resume must not switch arithmetic
        engine.fit(task, nn.Linear(8, 1), more, tmp_path / "run", Runtime(device=torch.device("cpu")))


def test_records_say_which_precision_ran():
    common = dict(task="retrieval", init="random", dataset="VOC2007", split="val", metric="precision@10",
                  value=0.5, ci95=None, per_class={}, n_images=3, seed=0, wall_time_s=1.0, protocol={})
    assert make_record(config={"precision": "bf16"}, **common)["precision"] == "bf16"
    assert make_record(config={}, **common)["precision"] == "fp32"


def test_speed_measure_reports_each_precision_side_by_side():
    def bench():
        return Bench(step=lambda batch, step: sum(batch), batch=[1, 2, 3], batches=lambda start, n: iter([[1]] * n))

    result = measure({"fp32": bench(), "bf16": bench()}, images_per_step=4, device="cpu", rounds=2, warmup=1,
                     steps=3)
    assert list(result) == ["fp32", "bf16"]
    assert all(r["steps_timed"] == 6 and r["model_only_images_per_s"] > 0 for r in result.values())
    summary = summarize(result)
    assert summary["fastest"] in result and summary["speedup_over_fp32"]["fp32"]["model_only"] == 1.0
    assert table(result).count("\n") == 3  # header, rule, one row per precision
    assert benchmark_precisions("cpu")[0] == "fp32"


@pytest.mark.filterwarnings("ignore:class\\(es\\).*no positive:UserWarning")  # the tiny devkit lacks classes
def test_transfer_record_and_speed_per_precision(tmp_path):
    from vocfactory import make_vocdevkit

    from transfer import classify, speed as transfer_speed

    voc = make_vocdevkit(tmp_path / "VOCdevkit", splits={"train": 8, "val": 4}, seed=2)
    args = ["--voc-root", str(voc.root), "--train-split", "train", "--test-split", "val", "--input-size", "64",
            "--base-size", "80", "--width", "0.25", "--fc-dim", "32", "--steps", "2", "--batch-size", "4",
            "--rescale-images", "4", "--rescale-iterations", "1", "--test-crops", "1", "--device", "cpu",
            "--threads", "1"]
    classify.main([*args, "--precision", "bf16", "--out", str(tmp_path / "cls.json")])
    record = json.loads((tmp_path / "cls.json").read_text())
    assert record["precision"] == record["config"]["precision"] == "bf16"
    result = transfer_speed.main([*args, "--bench-steps", "1", "--warmup", "0", "--rounds", "1", "--precisions",
                                  "fp32", "bf16"])
    assert set(result["precisions"]) == {"fp32", "bf16"}
    assert all(r["end_to_end_images_per_s"] > 0 for r in result["precisions"].values())
