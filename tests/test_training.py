import itertools
import json
import math

import pytest
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from hf_vit_reduction import training as T


def test_no_weight_decay_on_biases_norms_position_embedding_and_cls_token(make_model):
    model = make_model("grouped")
    optimizer = T.optimizer_for(model, lr=1e-3, weight_decay=0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = {group["weight_decay"]: {names[id(p)] for p in group["params"]} for group in optimizer.param_groups}
    assert set(groups) == {0.0, 0.05}
    no_decay, decay = groups[0.0], groups[0.05]
    assert {
        "vit.embeddings.position_embeddings",
        "vit.embeddings.cls_token",
    } <= no_decay
    assert all(n.endswith("bias") or "layernorm" in n or "embeddings." in n for n in no_decay)
    assert decay == {n for n, p in model.named_parameters() if p.ndim > 1} - no_decay
    assert "vit.layers.0.mlp.fc1.weight" in decay and "vit.embeddings.projection.weight" in decay
    assert len(no_decay) + len(decay) == len(list(model.parameters()))
    assert optimizer.defaults["lr"] == 1e-3


def test_cosine_schedule_with_warmup_steps_per_update(make_model):
    optimizer = T.optimizer_for(make_model(), lr=1e-3, weight_decay=0.05)
    scheduler = T.scheduler_for(
        optimizer,
        epochs=10,
        warmup_epochs=2,
        updates_per_epoch=5,
        min_lr=1e-5,
        warmup_lr=1e-6,
    )
    lrs = []
    for step in range(51):
        scheduler.step_update(step)
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(1e-6)
    assert lrs[10] == pytest.approx(
        1e-3 * 0.5 * (1 + math.cos(math.pi * 10 / 50)) + 1e-5 * (1 - 0.5 * (1 + math.cos(math.pi * 10 / 50))),
        rel=1e-3,
    )
    assert max(lrs) <= 1e-3 and lrs[-1] == pytest.approx(1e-5)
    assert all(a < b for a, b in itertools.pairwise(lrs[:11]))


def test_mixup_targets_sum_to_one_and_include_smoothing():
    mixup = T.mixup_for(0.8, 1.0, 0.1, num_classes=10)
    torch.manual_seed(0)
    images, labels = torch.randn(8, 3, 16, 16), torch.arange(8)
    mixed, targets = mixup(images.clone(), labels)
    assert targets.shape == (8, 10)
    assert torch.allclose(targets.sum(-1), torch.ones(8))
    assert targets.min().item() == pytest.approx(0.1 / 10)  # smoothing reaches every class
    assert not torch.equal(mixed, images)
    assert isinstance(T.train_criterion(mixup, 0.1), type(T.train_criterion(mixup, 0.0)))
    assert type(T.train_criterion(mixup, 0.1)).__name__ == "SoftTargetCrossEntropy"
    assert T.mixup_for(0.0, 0.0, 0.1, 10) is None
    assert type(T.train_criterion(None, 0.1)).__name__ == "LabelSmoothingCrossEntropy"


def test_ema_updates_each_shared_tensor_once(make_model):
    model = make_model("grouped")
    ema = T.ema_for(model, decay=0.5, warmup=False)
    before = ema.module.vit.layers[0].mlp.fc1.weight.clone()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    ema.update(model)
    # Updated once: 0.5 * old + 0.5 * (old + 1) = old + 0.5. Twice (as walking aliased tensors would) gives + 0.75.
    assert torch.allclose(ema.module.vit.layers[0].mlp.fc1.weight, before + 0.5)
    assert len(ema.module.state_dict()) == len(dict(model.named_parameters())) + len(list(model.buffers()))


def test_evaluation_matches_a_direct_computation(make_model):
    model = make_model()
    torch.manual_seed(0)
    pixels, labels = torch.randn(10, 3, 32, 32), torch.randint(0, 10, (10,))
    labels[3] = -1  # an unreadable image's placeholder
    batches = [{"pixel_values": pixels[i : i + 4], "labels": labels[i : i + 4]} for i in range(0, 10, 4)]
    accelerator = Accelerator(cpu=True)
    loader = accelerator.prepare(DataLoader(batches, batch_size=None))
    result = T.evaluate_model(model, loader, accelerator)
    with torch.no_grad():
        logits = model(pixels).logits
    valid = labels >= 0
    top5 = logits.topk(5).indices
    assert result["count"] == 9 and result["bad_images"] == 1
    assert result["top1"] == pytest.approx(100 * (logits.argmax(-1) == labels)[valid].float().mean().item())
    expected_top5 = (top5 == labels[:, None]).any(-1)[valid].float().mean().item()
    assert result["top5"] == pytest.approx(100 * expected_top5)
    loss = torch.nn.functional.cross_entropy(logits[valid], labels[valid]).item()
    assert result["loss"] == pytest.approx(loss, rel=1e-5)


def test_metric_module_loads_offline():
    metric = T.top_k_metric()
    result = metric.compute(
        predictions=[[1, 2, 3, 4, 5], [0, 9, 8, 7, 6], [2, 3, 4, 5, 6]],
        references=[1, 6, 9],
    )
    assert result == {
        "top1": pytest.approx(1 / 3),
        "top5": pytest.approx(2 / 3),
        "count": 3,
    }


def test_history_tracks_peak_final_and_gap():
    history = T.RunHistory()
    for epoch, top1 in enumerate([50.0, 80.0, 82.5, 82.5, 79.0]):
        history.add(
            {
                "epoch": epoch,
                "top1": top1,
                "top5": 90.0 + epoch,
                "loss": 1.0,
                "train_loss": 2.0,
            }
        )
    summary = history.summary()
    assert summary["peak_epoch"] == 2 and summary["peak_top1"] == 82.5
    assert summary["final_top1"] == 79.0 and summary["final_top5"] == 94.0
    assert summary["delta_peak_final"] == pytest.approx(3.5)
    restored = T.RunHistory()
    restored.load_state_dict(history.state_dict())
    assert restored.summary() == summary


def test_atomic_write_keeps_the_previous_file_on_failure(tmp_path):
    path = tmp_path / "results.json"
    T.write_json(path, {"top1": 1.0})
    with pytest.raises(TypeError):
        T.write_json(path, {"top1": object()})
    assert json.loads(path.read_text()) == {"top1": 1.0}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
    assert path.stat().st_mode & 0o044  # readable by others, unlike mkstemp's default


def test_plot_and_history_files(tmp_path):
    history = T.RunHistory()
    for epoch in range(3):
        history.add(
            {
                "epoch": epoch,
                "top1": 10.0 * epoch,
                "top5": 50.0,
                "loss": 1.0,
                "train_loss": 2.0,
            }
        )
    T.plot_history(tmp_path / "curves.png", history, "test")
    T.write_history(tmp_path / "history.jsonl", history)
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = (tmp_path / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["top1"] for line in lines] == [0.0, 10.0, 20.0]


def test_public_arguments_drop_secrets():
    assert T.public_arguments({"hub_token": "hf_secret", "lr": 0.1, "HUB_TOKEN_FILE": "x"}) == {"lr": 0.1}
