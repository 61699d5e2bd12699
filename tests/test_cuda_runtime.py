"""CUDA as GPU users expect, decided on the CPU: backend switches, memory format, compile, the data path's choice
(GPU properties faked with monkeypatch; no test needs a GPU)."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from cebench.errors import CebenchError
from cebench.runtime import DEVICE_DATA_FRACTION, Runtime, configure_backends, resolve_data_path
from transfer import engine

CPU = Runtime(device=torch.device("cpu"))
CUDA = Runtime(device=torch.device("cuda", 0))


@pytest.fixture
def backends():
    """The global switches, off for the test and restored after it (cuBLAS's are properties: no monkeypatch)."""
    switches = ((torch.backends.cuda.matmul, "allow_tf32"), (torch.backends.cudnn, "allow_tf32"),
                (torch.backends.cudnn, "benchmark"))
    saved = [getattr(module, name) for module, name in switches]
    for module, name in switches:
        setattr(module, name, False)
    yield torch.backends
    for (module, name), value in zip(switches, saved, strict=True):
        setattr(module, name, value)


def test_configure_backends_sets_tf32_and_benchmark_on_cuda_only(backends):
    configure_backends("cpu", fixed_shapes=True)  # the CPU: nothing changes, so no CPU result can
    assert not (backends.cuda.matmul.allow_tf32 or backends.cudnn.allow_tf32 or backends.cudnn.benchmark)
    configure_backends("cuda", fixed_shapes=False)  # detection/segmentation: variable shapes, no benchmark
    assert backends.cuda.matmul.allow_tf32 and backends.cudnn.allow_tf32 and not backends.cudnn.benchmark
    configure_backends("cuda", fixed_shapes=True)
    assert backends.cudnn.benchmark
    assert CUDA.settings() | {"precision": "bf16"} == {
        "device": "cuda:0", "precision": "bf16", "memory_format": "channels_last", "compile": False,
        "cudnn_benchmark": True, "tf32": True}
    assert CPU.settings() == {"device": "cpu", "precision": "fp32", "memory_format": "contiguous", "compile": False,
                              "cudnn_benchmark": False, "tf32": False}


def test_place_is_channels_last_on_cuda_only(monkeypatch):
    conv = nn.Conv2d(3, 4, 3)
    assert CPU.place(conv).weight.is_contiguous()  # NCHW on the CPU: CPU results do not change
    moved = []
    monkeypatch.setattr(nn.Module, "to", lambda self, *a, **k: moved.append((a, k)) or self)
    CUDA.place(conv)
    assert moved == [((torch.device("cuda", 0),), {}), ((), {"memory_format": torch.channels_last})]


def test_compile_wraps_only_when_asked_and_unwrap_sees_through_it():
    model = nn.Linear(2, 2)
    assert CPU.compiled(model) is model
    compiled = Runtime(device=torch.device("cpu"), compile=True).compiled(model)  # lazy: nothing compiles here
    assert compiled is not model and engine.unwrap(compiled) is model
    assert list(engine.unwrap(compiled).state_dict()) == ["weight", "bias"]  # checkpoints keep their keys


@pytest.mark.parametrize("nbytes, expected", [(DEVICE_DATA_FRACTION * 80e9, "device"),
                                              (DEVICE_DATA_FRACTION * 80e9 + 1, "loader")])
def test_data_path_auto_picks_device_when_images_fit_the_stated_fraction(monkeypatch, nbytes, expected):
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda *a: SimpleNamespace(total_memory=80e9))
    assert resolve_data_path("auto", "cuda", nbytes) == expected
    assert resolve_data_path("auto", "cpu", 1) == "loader"  # on a CPU, auto keeps today's loader
    assert resolve_data_path("device", "cpu", 1e15) == "device"  # asked for: as asked
    with pytest.raises(CebenchError, match="--data-path"):
        resolve_data_path("gpu", "cpu", 1)


def test_how_the_device_computed_does_not_split_a_table_cell():
    from evaluation.reporting.cells import configuration

    before = {"config": {"lr": 0.1, "device": "cpu"}, "weights_meta": {"steps": 3}, "dataset": "d", "split": "val"}
    after = {"config": {"lr": 0.1, "device": "cuda", "compile": True, "data_path": "device",
                        "runtime": CUDA.settings()},
             "weights_meta": {"steps": 3, "data_path": "device", "runtime": CUDA.settings()}, "dataset": "d",
             "split": "val"}
    assert configuration(before) == configuration(after)  # records from before issue 22 pool with newer ones
