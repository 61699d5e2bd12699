"""The README's "features outside cebench" section, run as a user would paste it (issue 25: the snippet failed
with "Unknown model (cebench_caffenet)" once `import pretrain` stopped registering the models, and the test of
the models imported pretrain.timm_models itself, which hid it).

In a folder holding results/voc-mini/ce.pt (a voc-mini-shaped trunk: the profile's arch, width and input size,
untrained) and ce.pt (a torchvision-shaped one): the bash block's export commands run with their own arguments;
the Python block runs in a fresh interpreter, followed by the timm load line of the bash block; its `.pt2` and
torchvision load lines run in a fresh interpreter where cebench, pretrain and timm cannot be imported (what "code
that knows nothing of cebench" means).
"""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cebench.config import get_profile
from pretrain.export import main as export_main

REPO = Path(__file__).resolve().parents[1]
SECTION = "## The features outside cebench"
BLOCKER = """import sys
class _NoCebench:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"cebench", "pretrain", "transfer", "evaluation", "voc", "timm"}:
            raise ImportError(f"this interpreter knows nothing of cebench: {name} is not importable")
sys.meta_path.insert(0, _NoCebench())
"""

pytestmark = pytest.mark.slow  # two interpreters start (torch, and timm in one)


def _section_blocks():
    text = (REPO / "README.md").read_text()
    section = text[text.index(SECTION):]
    section = section[:section.index("\n## ", len(SECTION))]
    return dict(re.findall(r"```(python|bash)\n(.*?)```", section, re.S))


def _run(cmd, cwd, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, **kwargs)
    assert proc.returncode == 0, f"{cmd[:2]} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory):
    from pretrain.model import AlexNetEncoder, ContextEncoder
    from pretrain.weights import save_checkpoint

    folder = tmp_path_factory.mktemp("user")
    section = get_profile("voc-mini")["pretrain"]
    torch.manual_seed(0)
    trunk = AlexNetEncoder(arch=section["arch"], width=section["width"])
    save_checkpoint(folder / "results" / "voc-mini" / "ce.pt", ContextEncoder(trunk, input_size=section["input_size"]),
                    {"steps": 0, "input_size": section["input_size"]}, include_decoder=False)
    tv = ContextEncoder(AlexNetEncoder(arch="torchvision"), input_size=64)
    save_checkpoint(folder / "ce.pt", tv, {"steps": 0, "input_size": 64}, include_decoder=False)
    return folder


def test_the_readme_blocks_run_as_written(user_folder, monkeypatch):
    blocks = _section_blocks()
    commands = [line for line in blocks["bash"].splitlines() if line.startswith("python -m pretrain.export ")]
    loads = [line.removeprefix("#").strip() for line in blocks["bash"].splitlines() if line.startswith("#   ")]
    assert len(commands) == len(loads) == 3
    # the exports: each command's own argv, through the entry point's main in this process (two fewer interpreters
    # to start; `python -m` itself is tested with the other entry points)
    monkeypatch.chdir(user_folder)
    for command in commands:
        export_main(shlex.split(command.split("#")[0])[3:])
    for name in ("ce_caffenet.safetensors", "ce_caffenet.pt2", "alexnet_features.pth"):
        assert (user_folder / f"{name}.config.json").is_file()
    timm_line, pt2_line, tv_line = loads
    # the Python block pasted into a fresh interpreter, then the timm load line (after the block's imports)
    check = ("\nprint(tuple(pool5.shape), len(maps(torch.randn(1, *config['input_size']))), classifier.num_classes)"
             f"\nm = {timm_line}\nprint(m.pretrained_cfg['input_size'], m.num_features)\n")
    out = _run([sys.executable, "-c", blocks["python"] + check], user_folder).splitlines()
    assert out[-2] == "(1, 256, 3, 3) 5 20"  # what the block's comments say, at voc-mini's 128 px
    assert out[-1] == "(3, 128, 128) 256"  # width and input size from the export's own configuration
    # the .pt2 and torchvision lines in an interpreter where cebench, pretrain and timm cannot be imported
    out = _run([sys.executable, "-c", BLOCKER + f"import torch, torchvision\ny = {pt2_line}\nprint(tuple(y.shape))\n"
                "import json\nextra = {'config.json': ''}\ntorch.export.load('ce_caffenet.pt2', extra_files=extra)\n"
                "print(json.loads(extra['config.json'])['mean'])\n"
                f"print({tv_line})\n"
                "print(sorted(m for m in sys.modules if m.split('.')[0] in {'cebench', 'pretrain', 'timm'}))"],
               user_folder)
    assert out.splitlines() == ["(4, 256, 3, 3)", "[0.485, 0.456, 0.406]", "<All keys matched successfully>", "[]"]
