"""Shared fixtures: the real voc-mini data when present (CI), skipped cleanly when absent (a user's clone)."""

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
VOC_MINI = Path(os.environ.get("CEBENCH_VOC_MINI", REPO.parent / "shared" / "data" / "voc-mini" / "VOCdevkit"))


@pytest.fixture(autouse=True, scope="session")
def _few_threads():
    """Tests use tiny tensors; more threads only add overhead on a 2-core machine."""
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def voc_mini_root():
    """Root of the real voc-mini VOCdevkit, or skip."""
    if not (VOC_MINI / "VOC2007" / "Annotations").is_dir():
        pytest.skip(f"real voc-mini data not found at {VOC_MINI}")
    return VOC_MINI
