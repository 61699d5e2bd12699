import json
import os

import pytest
import torch

from cebench import CebenchError
from cebench.errors import run_cli
from cebench.files import atomic_torch_save, atomic_write_json, display_path, refuse_overwrite, safe_torch_load
from cebench.records import make_record, read_record, write_record
from cebench.runtime import init_distributed, resolve_device, seed_everything


class Payload:  # a class pickled into a checkpoint: weights_only=True must refuse it
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_atomic_save_round_trip_and_no_temp_left(tmp_path):
    path = atomic_torch_save({"w": torch.arange(3)}, tmp_path / "a" / "ck.pt")
    assert torch.equal(safe_torch_load(path)["w"], torch.arange(3))
    assert sorted(p.name for p in path.parent.iterdir()) == ["ck.pt"]
    mask = os.umask(0o022)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's private 0600


def test_failed_atomic_write_keeps_previous_file(tmp_path):
    path = atomic_write_json(tmp_path / "r.json", {"a": 1})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_safe_load_refuses_pickled_code_missing_and_corrupt(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"x": Payload()}, evil)
    with pytest.raises(CebenchError, match="evil.pt: refused to load"):
        safe_torch_load(evil)
    with pytest.raises(CebenchError, match="not found"):
        safe_torch_load(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a zip at all")
    with pytest.raises(CebenchError, match="bad.pt: not a readable checkpoint"):
        safe_torch_load(bad)


def test_refuse_overwrite(tmp_path):
    (tmp_path / "x").write_text("keep")
    with pytest.raises(CebenchError, match="--overwrite"):
        refuse_overwrite(tmp_path / "x")
    assert refuse_overwrite(tmp_path / "x", overwrite=True) == tmp_path / "x"


def _record(**kw):
    base = dict(task="classification", init="random", dataset="voc", split="val", metric="mAP", value=0.5,
                ci95=(0.4, float("nan")), per_class={"cat": 0.25}, n_images=3, seed=0, wall_time_s=1.234,
                config={}, protocol={})
    base.update(kw)
    return make_record(**base)


def test_record_percent_nan_and_round_trip(tmp_path):
    rec = _record()
    assert rec["value"] == 50.0 and rec["ci95"] == [40.0, None] and rec["per_class"] == {"cat": 25.0}
    assert "torch" in rec["versions"]
    path = write_record(tmp_path / "rec.json", rec)
    assert read_record(path) == json.loads(path.read_text())
    with pytest.raises(ValueError):
        _record(task="dancing")


def test_read_record_refuses_non_records(tmp_path):
    (tmp_path / "a.json").write_text('{"task": "classification"}')
    with pytest.raises(CebenchError, match="a.json: not a result record"):
        read_record(tmp_path / "a.json")
    (tmp_path / "b.json").write_text("{oops")
    with pytest.raises(CebenchError, match="b.json: not a readable result record"):
        read_record(tmp_path / "b.json")


def test_run_cli_one_line_error(capsys):
    def main(argv):
        raise CebenchError("x.xml: malformed")

    with pytest.raises(SystemExit) as exc:
        run_cli(main, [])
    assert exc.value.code == 2
    assert capsys.readouterr().err == "error: x.xml: malformed\n"


def test_runtime_single_process_and_seeding(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    rt = init_distributed("cpu")
    assert (rt.rank, rt.world_size, rt.is_main, rt.distributed) == (0, 1, True, False)
    assert rt.precision in ("fp32", "bf16")  # auto: bf16 where the CPU has it natively
    with pytest.raises(CebenchError):
        resolve_device("tpu")
    seed_everything(3)
    a = torch.rand(2)
    seed_everything(3)
    assert torch.equal(a, torch.rand(2))


def test_display_path_is_relative_inside_the_root_and_absolute_outside(tmp_path):
    root = tmp_path / "checkout"
    (root / "results").mkdir(parents=True)
    assert display_path(root / "results" / "smoke", root) == "results/smoke"
    assert display_path(root / "results" / ".." / "results", root) == "results"  # resolved first
    assert display_path(tmp_path / "elsewhere.csv", root) == str(tmp_path / "elsewhere.csv")
