import os

# No test may reach the network: the Hub is unreachable from CI, and nothing may download weights or data.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

from hf_vit_reduction import ViTReducedConfig, ViTReducedForImageClassification

torch.set_num_threads(2)


@pytest.fixture
def make_model():
    """A tiny seeded classifier of the `digits` preset: make_model(strategy, seed=0, **config overrides)."""

    def make(strategy="baseline", seed=0, **overrides):
        torch.manual_seed(seed)
        config = ViTReducedConfig.from_preset("digits", reduction_strategy=strategy, **{"num_labels": 10, **overrides})
        return ViTReducedForImageClassification(config).eval()

    return make


@pytest.fixture(scope="session")
def python_without_package(tmp_path_factory) -> Path:
    """A Python that has torch and transformers but cannot import hf_vit_reduction.

    A fresh virtual environment whose .pth lists this environment's site-packages: a plain path entry, which does
    not activate the editable install's import finder (a .pth of its own in that folder).
    """
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = "import sysconfig; print(sysconfig.get_path('purelib'))"
    site = Path(subprocess.check_output([python, "-c", purelib], text=True).strip())
    (site / "shared_environment.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return python
