"""The fine-tuning engine: schedule, sampling, accumulation, clipping, checkpoints and exact resume."""

import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from cebench import CebenchError
from cebench.runtime import Runtime
from transfer import engine
from transfer.engine import TrainConfig, fit, learning_rate
from transfer.sampling import StepBatchSampler

CPU = Runtime(device=torch.device("cpu"))


class NoisyData(torch.utils.data.Dataset):
    """Fixed inputs plus augmentation noise drawn from the global torch generator (seeded by the engine)."""

    def __init__(self, n=24, dim=6):
        gen = torch.Generator().manual_seed(0)
        self.x, self.w = torch.randn(n, dim, generator=gen), torch.randn(dim, 1, generator=gen)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        x = self.x[i] + 0.1 * torch.randn(self.x.shape[1])
        return x, self.x[i] @ self.w


class ToyTask:
    def __init__(self):
        self.train_dataset = NoisyData()
        self.evaluated = 0

    def training_step(self, model, batch):
        x, y = batch
        return nn.functional.mse_loss(model(x), y)

    def evaluate(self, model):
        self.evaluated += 1
        x = self.train_dataset.x
        return {"mse": float(nn.functional.mse_loss(model(x), x @ self.train_dataset.w))}


def toy_model():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 1))


CONFIG = TrainConfig(steps=8, batch_size=4, lr=0.05, lr_step=3, lr_gamma=0.5, checkpoint_every=2, log_every=1,
                     seed=3)


def test_step_schedule_halves_every_lr_step():
    rates = [learning_rate(s, CONFIG) for s in range(8)]
    assert rates == [0.05] * 3 + [0.025] * 3 + [0.0125] * 2


def test_cosine_schedule_ends_near_zero_and_warmup_ramps():
    config = replace(CONFIG, schedule="cosine", warmup_steps=2, steps=10)
    assert learning_rate(0, config) == pytest.approx(0.025)
    assert learning_rate(2, config) == pytest.approx(0.05)
    assert learning_rate(9, config) < 0.005
    assert all(learning_rate(s, config) >= learning_rate(s + 1, config) for s in range(2, 9))


def test_epochs_to_steps():
    assert engine.epochs_to_steps(2, 2500, 16) == 2 * 156


def test_ranks_and_microbatches_partition_each_step():
    config = replace(CONFIG, batch_size=8, accum_steps=2)
    batches = {}
    for rank in range(2):
        sampler = StepBatchSampler(24, config, Runtime(torch.device("cpu"), rank=rank, world_size=2), 0, 6)
        batches[rank] = [[i for i, _ in b] for b in sampler]
        assert all(len(b) == 2 for b in batches[rank]) and len(sampler) == 12
    for step in range(6):
        items = [i for r in range(2) for b in batches[r][2 * step:2 * step + 2] for i in b]
        assert len(set(items)) == 8  # one step = 8 distinct images over ranks and micro-batches
    epoch0 = [i for step in range(3) for r in range(2) for b in batches[r][2 * step:2 * step + 2] for i in b]
    assert sorted(epoch0) == list(range(24))  # an epoch is a permutation


def test_sampler_refuses_indivisible_batches():
    with pytest.raises(CebenchError, match="not divisible"):
        StepBatchSampler(24, replace(CONFIG, batch_size=5, accum_steps=2), CPU, 0, 1)


def _params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_resume_reproduces_an_uninterrupted_run(tmp_path):
    whole = toy_model()
    fit(ToyTask(), whole, CONFIG, tmp_path / "a", CPU)
    first = toy_model()
    part = fit(ToyTask(), first, replace(CONFIG, max_steps=5), tmp_path / "b", CPU)
    assert part.step == 5 and not torch.equal(_params(first), _params(whole))
    resumed = toy_model()  # a fresh process: weights come from the checkpoint
    result = fit(ToyTask(), resumed, CONFIG, tmp_path / "b", CPU)
    assert result.resumed_from == 5 and result.step == 8 and result.train_time_s >= part.train_time_s
    assert torch.equal(_params(resumed), _params(whole))


def test_max_steps_keeps_the_schedule(tmp_path):
    fit(ToyTask(), toy_model(), replace(CONFIG, max_steps=4), tmp_path, CPU)
    rows = [r for r in map(eval_json, (tmp_path / "metrics.jsonl").read_text().splitlines()) if "lr" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["lr"] == pytest.approx(0.025)  # step 4 of an 8-step schedule halving every 3


def eval_json(line):
    import json

    return json.loads(line)


def test_accumulation_matches_one_large_batch(tmp_path):
    class Linear(ToyTask):
        def training_step(self, model, batch):
            x, y = batch
            return nn.functional.mse_loss(model[0](x)[:, :1], y)

    config = replace(CONFIG, steps=1, batch_size=4, momentum=0.0)
    a, b = toy_model(), toy_model()
    fit(Linear(), a, config, tmp_path / "a", CPU)
    fit(Linear(), b, replace(config, accum_steps=2), tmp_path / "b", CPU)
    assert torch.allclose(_params(a), _params(b), atol=1e-6)


def test_gradient_clipping_bounds_the_update(tmp_path):
    class Huge(ToyTask):
        def training_step(self, model, batch):
            return 1e6 * super().training_step(model, batch)

    config = replace(CONFIG, steps=1, momentum=0.0, clip_grad_norm=1.0, lr=0.1)
    model = toy_model()
    before = _params(model)
    fit(Huge(), model, config, tmp_path, CPU)
    assert torch.linalg.vector_norm(_params(model) - before) == pytest.approx(0.1, rel=1e-4)


def test_periodic_and_final_evaluation(tmp_path):
    task = ToyTask()
    result = fit(task, toy_model(), replace(CONFIG, eval_every=3), tmp_path, CPU)
    assert task.evaluated == 3  # steps 3 and 6, and the end
    assert math.isfinite(result.metrics["mse"])


def test_checkpoint_of_other_settings_is_refused(tmp_path):
    fit(ToyTask(), toy_model(), replace(CONFIG, max_steps=2), tmp_path, CPU)
    with pytest.raises(CebenchError, match="different settings.*lr"):
        fit(ToyTask(), toy_model(), replace(CONFIG, lr=0.1), tmp_path, CPU)


def test_checkpoint_needing_code_is_refused(tmp_path):
    torch.save({"format": engine.CHECKPOINT_FORMAT, "payload": NoisyData(n=2)}, tmp_path / engine.CHECKPOINT_NAME)
    with pytest.raises(CebenchError, match="checkpoint.pt"):
        fit(ToyTask(), toy_model(), CONFIG, tmp_path, CPU)


def test_divergence_is_reported(tmp_path):
    class Nan(ToyTask):
        def training_step(self, model, batch):
            return super().training_step(model, batch) * float("nan")

    with pytest.raises(CebenchError, match="diverged"):
        fit(Nan(), toy_model(), CONFIG, tmp_path, CPU)
