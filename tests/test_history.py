import pytest

from hf_vit_reduction.training.history import RunHistory


def test_history_tracks_peak_final_and_gap():
    history = RunHistory()
    for epoch, top1 in enumerate([50.0, 80.0, 82.5, 82.5, 79.0]):
        history.add({"epoch": epoch, "top1": top1, "top5": 90.0 + epoch, "loss": 1.0, "train_loss": 2.0})
    summary = history.summary()
    assert summary["peak_epoch"] == 2 and summary["peak_top1"] == 82.5
    assert summary["final_top1"] == 79.0 and summary["final_top5"] == 94.0
    assert summary["delta_peak_final"] == pytest.approx(3.5)
    restored = RunHistory()
    restored.load_state_dict(history.state_dict())
    assert restored.summary() == summary
