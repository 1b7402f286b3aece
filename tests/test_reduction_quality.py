import json

import pytest
import torch

from hf_vit_reduction.study import reduction_quality


@pytest.mark.slow  # tens of seconds on 2 cores: the slow tier
def test_one_epoch_measurement_runs_and_reports_every_reduction(tmp_path):
    out = tmp_path / "quality.json"
    reduction_quality.main(["--seeds", "0", "--epochs", "1", "--json", str(out)])
    result = json.loads(out.read_text())["0"]
    assert result["max_logit_difference_timm_vs_converted"] <= 1e-4
    rows = result["rows"]
    assert rows["converted baseline"]["top1_agreement"] == 1.0
    assert set(rows) >= {
        "shallow 0.5 first",
        "shallow 0.5 magnitude",
        "grouped leader",
        "grouped mean",
        "shallow 0.5 activation",
        "shallow 0.5 taylor",
        "grouped aligned",
    }
    for row in rows.values():
        assert 0.0 <= row["accuracy"] <= 1.0 and -1.0 <= row["logit_cosine"] <= 1.0


def planted_source(train, seed: int, epochs: int):
    """In place of training: a timm ViT of the digits preset's size whose seeded weights are large enough for its
    predictions to depend on the image; each MLP computes with its last 128 of 256 hidden units only (the first 128
    are zeros) and blocks 0 and 1 (2 and 3) hold equal MLPs."""
    model = reduction_quality.digits_sized_timm_vit(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0, 0.3)
        for index, block in enumerate(model.blocks):
            if index % 2:
                block.mlp.load_state_dict(model.blocks[index - 1].mlp.state_dict())
            else:
                block.mlp.fc1.weight[:128] = block.mlp.fc1.bias[:128] = block.mlp.fc2.weight[:, :128] = 0
    return model.eval()


@pytest.mark.slow  # over a second on 2 cores: the fast tier stays under a minute
def test_reductions_that_keep_every_unit_that_computes_equal_the_source(tmp_path, monkeypatch):
    digits = reduction_quality.digits

    def first_test_images(seed):  # 20 of the 360 held-out images keep the fast tier fast
        train, (images, labels) = digits(seed)
        return train, (images[:20], labels[:20])

    monkeypatch.setattr(reduction_quality, "digits", first_test_images)
    monkeypatch.setattr(reduction_quality, "train_timm", planted_source)
    out = tmp_path / "quality.json"
    reduction_quality.main(["--seeds", "0", "--json", str(out)])
    result = json.loads(out.read_text())["0"]
    rows = result["rows"]
    _, (images, labels) = first_test_images(0)
    with torch.no_grad():
        predictions = planted_source(None, 0, 0)(images).argmax(-1)
    assert result["test_images"] == 20 and len(set(predictions.tolist())) > 1  # not one class for every image
    baseline = rows["converted baseline"]
    assert baseline["accuracy"] == pytest.approx((predictions == labels).float().mean().item())
    assert baseline["top1_agreement"] == 1.0 and baseline["logit_cosine"] == pytest.approx(1.0, abs=1e-6)
    # Magnitude pruning to half or more keeps all 128 units that compute; a pair of equal MLPs shared through its
    # leader or its mean is that MLP: each of these is the source.
    for name in ("shallow 0.75 magnitude", "shallow 0.5 magnitude", "grouped leader", "grouped mean"):
        assert rows[name]["accuracy"] == baseline["accuracy"] and rows[name]["top1_agreement"] == 1.0, name
        assert rows[name]["logit_cosine"] == pytest.approx(1.0, abs=1e-6), name
    # Keeping the first units drops units that compute (at 0.5, all of them).
    for ratio in ("0.75", "0.5"):
        assert rows[f"shallow {ratio} first"]["logit_cosine"] < 0.99, ratio
