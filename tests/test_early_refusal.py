"""An existing record is refused before any data is loaded (issue 25 item 4): retrieval and inpainting name the
record their --weights would write (pretrain.weights.weights_label; hog for --features hog) and refuse it with one
line before reading an image, pretraining refuses an existing ce.pt before it builds its dataset. Every run here
points its data at an empty folder: one that got as far as the data would fail there with another message.
The parsers' copies of constants owned by heavier modules agree with them."""

import shutil
import subprocess
import sys

import pytest
from test_fast_help import ROOT, _heavy_after

from cebench.config import benchmarks_path
from cebench.errors import CebenchError
from pretrain.model import AlexNetEncoder, ContextEncoder
from pretrain.weights import holds_decoder, save_checkpoint

HEAVY = ("torch", "torchvision", "timm", "sklearn", "cv2", "faiss", "skimage", "pandas", "matplotlib")
CHILD = """
import sys
from importlib import import_module
from cebench.errors import CebenchError
try:
    import_module({module!r}).main({argv!r})
except CebenchError as err:
    print("REFUSED", err)
print("HEAVY", sorted(m for m in {heavy!r} if m in sys.modules))
"""


@pytest.fixture
def results(tmp_path, monkeypatch):
    """A checkout of our own: benchmarks.yaml copied, so that results/<profile>/ (the default --out) is in tmp."""
    shutil.copy(benchmarks_path(), tmp_path / "benchmarks.yaml")
    monkeypatch.setenv("CEBENCH_BENCHMARKS", str(tmp_path / "benchmarks.yaml"))
    (tmp_path / "empty").mkdir()
    out = tmp_path / "results" / "smoke"
    out.mkdir(parents=True)
    return out


@pytest.fixture(scope="module")
def ce_pt(tmp_path_factory):
    model = ContextEncoder(AlexNetEncoder(width=0.25), input_size=64)
    return save_checkpoint(tmp_path_factory.mktemp("ce") / "ce.pt", model, {"steps": 1, "init_label": "ce"})


def _no_data(results):
    """Flags that send a run to an empty folder for its images."""
    return ["--profile", "smoke", "--voc-root", str(results.parents[1] / "empty"), "--device", "cpu"]


@pytest.mark.parametrize("module", ["evaluation.retrieval", "evaluation.inpainting"])
@pytest.mark.parametrize(("source", "label"), [(["--features", "hog"], "hog"), (["--weights", "random"], "random"),
                                               (["--weights", "kmeans"], "kmeans"), (["--weights", "CE"], "ce")])
def test_an_existing_record_is_refused_before_any_image_is_read(module, source, label, results, ce_pt):
    source = [str(ce_pt) if a == "CE" else a for a in source]
    stage = module.split(".")[1]
    record = results / f"{stage}_{label}.json"  # the default --out: named by the label the weights get
    record.write_text("{}")
    main = __import__(module, fromlist=["main"]).main
    with pytest.raises(CebenchError, match=f"{record.name} exists; pass --overwrite"):
        main([*_no_data(results), *source])
    assert record.read_text() == "{}"
    with pytest.raises(CebenchError) as err:  # --overwrite: the run goes on, to the empty folder's error
        main([*_no_data(results), *source, "--overwrite"])
    assert "exists" not in str(err.value) and "empty" in str(err.value)


def test_inpainting_refuses_the_decoder_record_of_a_ce_pt_that_holds_a_decoder(results, ce_pt, tmp_path):
    decoder_record = results / "inpainting_ce_decoder.json"
    decoder_record.write_text("{}")
    from evaluation import inpainting

    with pytest.raises(CebenchError, match="inpainting_ce_decoder.json exists"):
        inpainting.main([*_no_data(results), "--weights", str(ce_pt)])
    with pytest.raises(CebenchError, match="inpainting_ce_decoder.json exists"):  # --decoder on: whatever it holds
        inpainting.main([*_no_data(results), "--weights", str(ce_pt), "--decoder", "on"])
    with pytest.raises(CebenchError) as err:  # --decoder off writes no decoder record: nothing to refuse
        inpainting.main([*_no_data(results), "--weights", str(ce_pt), "--decoder", "off"])
    assert "exists" not in str(err.value)
    encoder_only = save_checkpoint(tmp_path / "enc.pt", ContextEncoder(AlexNetEncoder(width=0.25), input_size=64),
                                   {"steps": 1}, include_decoder=False)
    assert holds_decoder(ce_pt) and not holds_decoder(encoder_only) and not holds_decoder("random")
    with pytest.raises(CebenchError) as err:  # auto with an encoder-only ce.pt scores no decoder: no refusal
        inpainting.main([*_no_data(results), "--weights", str(encoder_only)])
    assert "exists" not in str(err.value)


@pytest.mark.parametrize("module", ["evaluation.retrieval", "evaluation.inpainting"])
def test_the_refusal_imports_no_model_code(module, tmp_path):
    """A record of HOG or random features is refused before torch, faiss or scikit-image is imported: the one line
    comes in a fraction of a second, as --help does (a weights file needs torch to be read for its label)."""
    record = tmp_path / "r.json"
    record.write_text("{}")
    argv = ["--profile", "smoke", "--voc-root", str(tmp_path / "none"), "--features", "hog", "--out", str(record)]
    code = CHILD.format(module=module, argv=argv, heavy=HEAVY)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"REFUSED {record} exists" in done.stdout and done.stdout.splitlines()[-1] == "HEAVY []", done.stdout


def test_pretraining_refuses_an_existing_ce_pt_before_it_builds_its_dataset(tmp_path):
    from pretrain import train

    (tmp_path / "empty").mkdir()
    out = tmp_path / "ce.pt"
    out.write_bytes(b"a previous run's weights")
    argv = ["--profile", "smoke", "--images", str(tmp_path / "empty"), "--image-split", "all", "--device", "cpu",
            "--out", str(out)]
    with pytest.raises(CebenchError, match="ce.pt exists; pass --overwrite"):
        train.main(argv)
    assert out.read_bytes() == b"a previous run's weights"
    with pytest.raises(CebenchError) as err:  # --overwrite: on to the dataset, which finds no image
        train.main([*argv, "--overwrite"])
    assert "exists" not in str(err.value) and "empty" in str(err.value)
    assert out.read_bytes() == b"a previous run's weights"  # the failed run put the previous one back


def test_the_parsers_copies_of_constants_agree_with_their_owners():
    from evaluation.experiments import flags
    from evaluation.experiments.probe_run import CLASSIFIERS
    from evaluation.metrics.knn import KINDS, METRICS

    assert flags.SEARCH_METRICS == METRICS and flags.INDEX_KINDS == KINDS
    assert flags.PROBE_CLASSIFIERS == tuple(CLASSIFIERS)


@pytest.mark.parametrize("module", ["evaluation.tables", "evaluation.report", "evaluation.readme"])
def test_the_reporting_help_imports_neither_pandas_nor_matplotlib(module):
    out, heavy = _heavy_after(module, ["--help"], HEAVY)
    assert "usage:" in out and heavy == []


def test_retrieval_still_offers_search():  # DESIGN.md's evaluation.retrieval.search, imported when asked for
    from evaluation.metrics.knn import search
    from evaluation.retrieval import search as offered

    assert offered is search
