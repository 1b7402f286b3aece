import os

# No test may reach the network: the Hub is unreachable from CI, and nothing may download weights or data.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

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
