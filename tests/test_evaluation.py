import pytest
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from hf_vit_reduction.evaluation.scoring import evaluate_model, evaluate_model_and_ema, top_k_metric
from hf_vit_reduction.training.builders import Normalize, build_ema


def test_evaluation_matches_a_direct_computation(make_model):
    model = make_model()
    torch.manual_seed(0)
    pixels, labels = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8), torch.randint(0, 10, (10,))
    labels[3] = -1  # an unreadable image's placeholder
    batches = [{"pixel_values": pixels[i : i + 4], "labels": labels[i : i + 4]} for i in range(0, 10, 4)]
    accelerator = Accelerator(cpu=True)
    loader = accelerator.prepare(DataLoader(batches, batch_size=None))
    result = evaluate_model(model, loader, accelerator, normalize=Normalize((0.5,) * 3, (0.5,) * 3, device="cpu"))
    with torch.no_grad():
        logits = model((pixels.float() - 127.5) / 127.5).logits
    valid = labels >= 0
    top5 = logits.topk(5).indices
    assert result["count"] == 9 and result["bad_images"] == 1
    assert result["top1"] == pytest.approx(100 * (logits.argmax(-1) == labels)[valid].float().mean().item())
    expected_top5 = (top5 == labels[:, None]).any(-1)[valid].float().mean().item()
    assert result["top5"] == pytest.approx(100 * expected_top5)
    loss = torch.nn.functional.cross_entropy(logits[valid], labels[valid]).item()
    assert result["loss"] == pytest.approx(loss, rel=1e-5)


def test_metric_module_loads_offline():
    metric = top_k_metric()
    result = metric.compute(predictions=[[1, 2, 3, 4, 5], [0, 9, 8, 7, 6], [2, 3, 4, 5, 6]], references=[1, 6, 9])
    assert result == {"top1": pytest.approx(1 / 3), "top5": pytest.approx(2 / 3), "count": 3}


def test_the_ema_is_reported_when_on(make_model):
    model = make_model()
    ema = build_ema(make_model(seed=1), decay=0.9, warmup=False, decay_per_use=False, total_updates=1)
    torch.manual_seed(0)
    pixels = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    batches = [{"pixel_values": pixels, "labels": torch.randint(0, 10, (6,))}]
    accelerator = Accelerator(cpu=True)
    loader = accelerator.prepare(DataLoader(batches, batch_size=None))
    normalize = Normalize((0.5,) * 3, (0.5,) * 3, device="cpu")
    row = evaluate_model_and_ema(model, ema, loader, accelerator, normalize=normalize)
    assert row["top1"] == row["ema_top1"] and row["loss"] == row["ema_loss"]
    assert row["model_loss"] != row["ema_loss"]
    without = evaluate_model_and_ema(model, None, loader, accelerator, normalize=normalize)
    assert without["top1"] == without["model_top1"] and "ema_top1" not in without
