"""Top-1/top-5 and loss over a validation split, every example counted once across processes: the loop that
training validates with and `evaluate` scores with."""

from pathlib import Path

import evaluate
import torch

TOP_K_METRIC = str(Path(__file__).parent / "metrics" / "top_k_accuracy")


def top_k_metric():
    """The metric module shipped in this package (`evaluate.load` of a Hub metric needs the network)."""
    return evaluate.load(TOP_K_METRIC, keep_in_memory=True)


@torch.no_grad()
def evaluate_model(model, loader, accelerator, *, normalize, k: int = 5, keep_predictions: bool = False) -> dict:
    """Top-1/top-5 (percent) and cross-entropy over every validation example exactly once across processes.

    The loader's images are turned into the model's floats on the device by `normalize` (`recipe.Normalize` for
    uint8 images).

    Unreadable images arrive as placeholders labelled -1 so that every process gathers equal shapes; they are
    dropped after the gather and counted. With `keep_predictions`, "predictions" and "labels" list each readable
    image's top-1 class and label, in the loader's order (the gather of an unshuffled prepared loader keeps it).
    """
    metric = top_k_metric()
    was_training = model.training
    model.eval()
    loss_sum, bad, predictions, references = 0.0, 0, [], []
    for batch in loader:
        with accelerator.autocast():
            logits = model(pixel_values=normalize(batch["pixel_values"])).logits.float()
        ranked = logits.topk(min(k, logits.shape[-1]), dim=-1).indices
        labels = batch["labels"]
        losses = torch.nn.functional.cross_entropy(logits, labels.clamp(min=0), reduction="none")
        ranked, labels, losses = accelerator.gather_for_metrics((ranked, labels, losses))
        valid = labels >= 0
        bad += int((~valid).sum())
        loss_sum += float(losses[valid].sum())
        if valid.any():
            ranked_valid, labels_valid = ranked[valid].cpu().tolist(), labels[valid].cpu().tolist()
            metric.add_batch(predictions=ranked_valid, references=labels_valid)
            if keep_predictions:
                predictions += [row[0] for row in ranked_valid]
                references += labels_valid
    model.train(was_training)
    result = metric.compute(k=min(k, ranked.shape[-1]))
    top_k = next(key for key in result if key.startswith("top") and key != "top1")
    scores = {
        "top1": 100 * result["top1"],
        "top5": 100 * result[top_k],
        "loss": loss_sum / max(result["count"], 1),
        "count": result["count"],
        "bad_images": bad,
    }
    return scores | ({"predictions": predictions, "labels": references} if keep_predictions else {})


def evaluate_model_and_ema(model, ema, loader, accelerator, *, normalize) -> dict:
    """A history row's metrics: the model's, the EMA's, and the reported ones (the EMA's when on, as timm)."""
    row = {f"model_{k}": v for k, v in evaluate_model(model, loader, accelerator, normalize=normalize).items()}
    reported = {k.removeprefix("model_"): v for k, v in row.items()}
    if ema is not None:
        reported = evaluate_model(ema.module, loader, accelerator, normalize=normalize)
        row |= {f"ema_{k}": v for k, v in reported.items()}
    return row | {k: reported[k] for k in ("top1", "top5", "loss")}
