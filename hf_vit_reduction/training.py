"""The training loop's parts: recipes, optimizer groups, schedule, mixup, EMA, evaluation, history and results."""

import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import evaluate
import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import param_groups_weight_decay
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3

TOP_K_METRIC = str(Path(__file__).parent / "metrics" / "top_k_accuracy")

# No weight decay on these (besides biases and norms, which timm excludes as 1-D tensors), as timm's ViT declares.
NO_WEIGHT_DECAY = ("*position_embeddings", "*cls_token")

# The paper's recipe: timm's ImageNet recipe for ViT-B/16 (DeiT-B's global batch of 1024 over 2 GPUs x 128 x 4).
PAPER_RECIPE = {
    "model_size": "base",
    "epochs": 300,
    "batch_size": 128,
    "grad_accum_steps": 4,
    "lr": 1e-3,
    "min_lr": 1e-5,
    "warmup_lr": 1e-6,
    "warmup_epochs": 5,
    "weight_decay": 0.05,
    "drop_path": 0.1,
    "mixup": 0.8,
    "cutmix": 1.0,
    "smoothing": 0.1,
    "aa": "rand-m9-mstd0.5-inc1",
    "reprob": 0.25,
    "scale": (0.08, 1.0),
    "hflip": 0.5,
    "crop_pct": 0.9,
    "aug_repeats": 3,
    "model_ema": True,
    "model_ema_decay": 0.9998,
    "model_ema_warmup": False,
    "workers": 8,
}

# The embedded 8x8 digits: a small model, a short run, gentle crops, no flips (a flipped digit is another digit),
# no RandAugment and an EMA whose horizon fits a run of a few hundred steps. A patch here is about one pixel of
# the 8x8 original, so RandAugment's colour operations (invert, solarize, posterize) erase most of what a token
# carries: with them a baseline sat at chance for 25 epochs and ended at 40% (seed 2). Measured in the README.
DIGITS_RECIPE = {
    **PAPER_RECIPE,
    "model_size": "digits",
    "epochs": 40,
    "batch_size": 64,
    "grad_accum_steps": 1,
    "lr": 2e-3,
    "warmup_epochs": 3,
    "drop_path": 0.05,
    "aa": None,
    "mixup": 0.2,
    "cutmix": 0.0,
    "reprob": 0.1,
    "scale": (0.6, 1.0),
    "hflip": 0.0,
    "crop_pct": 1.0,
    "model_ema_decay": 0.99,
    "model_ema_warmup": True,
    "workers": 2,
}


def optimizer_for(model: torch.nn.Module, lr: float, weight_decay: float, fused: bool = False):
    """AdamW with timm's groups: no weight decay on biases, norms, the position embedding and the CLS token."""
    groups = param_groups_weight_decay(model, weight_decay, no_weight_decay_list=NO_WEIGHT_DECAY)
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=fused or None)


def scheduler_for(
    optimizer,
    epochs: float,
    warmup_epochs: float,
    updates_per_epoch: int,
    min_lr: float,
    warmup_lr,
):
    """timm's cosine schedule with linear warm-up, stepped on every optimizer update."""
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched="cosine",
        num_epochs=epochs,
        warmup_epochs=warmup_epochs,
        min_lr=min_lr,
        warmup_lr=warmup_lr,
        step_on_epochs=False,
        updates_per_epoch=updates_per_epoch,
    )
    return scheduler


def mixup_for(mixup: float, cutmix: float, smoothing: float, num_classes: int) -> Mixup | None:
    """timm's Mixup/CutMix, which folds label smoothing into its soft targets; None when both are off."""
    if mixup <= 0 and cutmix <= 0:
        return None
    return Mixup(
        mixup_alpha=mixup,
        cutmix_alpha=cutmix,
        label_smoothing=smoothing,
        num_classes=num_classes,
    )


def train_criterion(mixup: Mixup | None, smoothing: float) -> torch.nn.Module:
    if mixup is not None:
        return SoftTargetCrossEntropy()
    if smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=smoothing)
    return torch.nn.CrossEntropyLoss()


def ema_for(model: torch.nn.Module, decay: float, warmup: bool) -> ModelEmaV3:
    """timm's ModelEmaV3. It walks `state_dict()`, where our shared MLPs appear once, so each updates once a step."""
    return ModelEmaV3(model, decay=decay, use_warmup=warmup)


def top_k_metric():
    """The metric module shipped in this package (`evaluate.load` of a Hub metric needs the network)."""
    return evaluate.load(TOP_K_METRIC, keep_in_memory=True)


@torch.no_grad()
def evaluate_model(model, loader, accelerator, k: int = 5) -> dict:
    """Top-1/top-5 (percent) and cross-entropy over every validation example exactly once across processes.

    Unreadable images arrive as placeholders labelled -1 so that every process gathers equal shapes; they are
    dropped after the gather and counted.
    """
    metric = top_k_metric()
    was_training = model.training
    model.eval()
    loss_sum, bad = 0.0, 0
    for batch in loader:
        with accelerator.autocast():
            logits = model(pixel_values=batch["pixel_values"]).logits.float()
        ranked = logits.topk(min(k, logits.shape[-1]), dim=-1).indices
        labels = batch["labels"]
        losses = torch.nn.functional.cross_entropy(logits, labels.clamp(min=0), reduction="none")
        ranked, labels, losses = accelerator.gather_for_metrics((ranked, labels, losses))
        valid = labels >= 0
        bad += int((~valid).sum())
        loss_sum += float(losses[valid].sum())
        if valid.any():
            metric.add_batch(
                predictions=ranked[valid].cpu().tolist(),
                references=labels[valid].cpu().tolist(),
            )
    model.train(was_training)
    result = metric.compute(k=min(k, ranked.shape[-1]))
    top_k = next(key for key in result if key.startswith("top") and key != "top1")
    return {
        "top1": 100 * result["top1"],
        "top5": 100 * result[top_k],
        "loss": loss_sum / max(result["count"], 1),
        "count": result["count"],
        "bad_images": bad,
    }


def evaluate_both(model, ema, loader, accelerator) -> dict:
    """A history row's metrics: the model's, the EMA's, and the reported ones (the EMA's when on, as timm)."""
    row = {f"model_{k}": v for k, v in evaluate_model(model, loader, accelerator).items()}
    reported = {k.removeprefix("model_"): v for k, v in row.items()}
    if ema is not None:
        reported = evaluate_model(ema.module, loader, accelerator)
        row |= {f"ema_{k}": v for k, v in reported.items()}
    return row | {k: reported[k] for k in ("top1", "top5", "loss")}


def mixed_precision(requested: str | None, amp: bool) -> str:
    """Accelerate's mixed precision: as requested; with --amp bf16 where supported, else fp16 (loss scaling)."""
    if requested:
        return requested
    if not amp or not torch.cuda.is_available():
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def new_train_state() -> dict:
    """What a checkpoint records besides weights and RNG states (JSON-serializable)."""
    return {
        "step": 0,
        "elapsed": 0.0,
        "seen": 0,
        "loss_sum": 0.0,
        "loss_count": 0,
        "bad_train_count": 0,
        "bad_train_examples": [],
        "history": {"rows": []},
    }


def count_bad_images(state: dict, descriptions: list[str], examples: int = 10) -> None:
    state["bad_train_count"] += len(descriptions)
    state["bad_train_examples"] += descriptions[: examples - len(state["bad_train_examples"])]


def results(history, summary: dict, state: dict, elapsed: float, args, model, source: str) -> dict:
    """results.json: the paper's figures (percent) first, then what identifies and sizes the run."""
    last = history.rows[-1] if history.rows else {}
    return {
        **history.summary(),
        "strategy": model.config.reduction_strategy,
        "seed": args.seed,
        "parameters": summary["num_parameters"],
        "mlp_parameters": summary["mlp_parameters"],
        "gmacs": summary["gmacs"],
        "epochs": (last.get("epoch", -1) + 1),
        "steps": state["step"],
        "wall_time_s": elapsed,
        "train_images_per_s": state["seen"] / elapsed if elapsed else 0.0,
        "eval_samples": last.get("model_count", 0),
        "bad_train_images": state["bad_train_count"],
        "data": source,
    }


@dataclass
class RunHistory:
    """Per-epoch metrics and the paper's stability figures: peak epoch, peak and final top-1, Δ(P→F)."""

    rows: list[dict] = field(default_factory=list)

    def add(self, row: dict) -> bool:
        """Record one evaluation; True when its reported top-1 is a new peak."""
        is_peak = not self.rows or row["top1"] > self.peak["top1"]
        self.rows.append(row)
        return is_peak

    @property
    def peak(self) -> dict:
        # The first epoch that reaches the maximum is the peak, as the paper counts it.
        return max(self.rows, key=lambda row: (row["top1"], -row["epoch"]))

    def summary(self) -> dict:
        if not self.rows:
            return {}
        peak, final = self.peak, self.rows[-1]
        return {
            "final_top1": final["top1"],
            "final_top5": final["top5"],
            "peak_top1": peak["top1"],
            "peak_top5": peak["top5"],
            "peak_epoch": peak["epoch"],
            "delta_peak_final": peak["top1"] - final["top1"],
        }

    def state_dict(self) -> dict:
        return {"rows": [dict(row) for row in self.rows]}

    def load_state_dict(self, state: dict) -> None:
        self.rows = [dict(row) for row in state["rows"]]


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Write a file completely or not at all: a crash leaves the previous version, never half of a new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)  # mkstemp creates 0600; results are meant to be shared
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_json(path, data) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_history(path, history: RunHistory) -> None:
    write_atomic(
        path,
        "".join(json.dumps(row, default=_json_default) + "\n" for row in history.rows),
    )


def _json_default(value):
    if isinstance(value, (tuple, set)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def plot_history(path, history: RunHistory, title: str) -> None:
    """A PNG of train loss, validation loss and top-1 per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history.rows]
    figure, (losses, accuracy) = plt.subplots(1, 2, figsize=(10, 4))
    losses.plot(
        epochs,
        [row["train_loss"] for row in history.rows],
        label="train (mixup targets)",
    )
    losses.plot(epochs, [row["loss"] for row in history.rows], label="validation")
    losses.set_xlabel("epoch")
    losses.set_ylabel("loss")
    losses.legend()
    accuracy.plot(epochs, [row["top1"] for row in history.rows], label="reported top-1")
    if any("model_top1" in row for row in history.rows):
        accuracy.plot(
            epochs,
            [row.get("model_top1", math.nan) for row in history.rows],
            label="model top-1",
        )
    if history.rows:
        peak = history.peak
        accuracy.scatter([peak["epoch"]], [peak["top1"]], color="red", zorder=3, label="peak")
    accuracy.set_xlabel("epoch")
    accuracy.set_ylabel("top-1 (%)")
    accuracy.legend()
    figure.suptitle(title)
    figure.tight_layout()
    temporary = Path(path).with_name(f".{Path(path).name}.tmp.png")
    figure.savefig(temporary, dpi=100)
    plt.close(figure)
    os.replace(temporary, path)


def bare_step_speed(model, optimizer, criterion, mixup, loader, accelerator, args) -> float:
    """Images/s of the bare step: forward, backward and AdamW on one fixed batch, with nothing around it."""
    batch = next(iter(loader))
    images = batch["pixel_values"].to(accelerator.device)
    labels = batch["labels"].to(accelerator.device)
    if mixup is not None:
        images, labels = mixup(images, labels)
    model.train()

    def step():
        with accelerator.autocast():
            loss = criterion(model(pixel_values=images).logits, labels)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(args.benchmark_warmup):
        step()
    steps = (args.max_train_steps - args.benchmark_warmup) * args.grad_accum_steps
    accelerator.wait_for_everyone()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return len(labels) * steps * accelerator.num_processes / elapsed


def loop_benchmark(loop_images_per_s: float, bare_before: float, bare_after: float, args, accelerator) -> dict:
    """The loop's speed against the bare step's, timed just before and just after the loop (drift cancels)."""
    bare = (bare_before + bare_after) / 2
    return {
        "batch_size": args.batch_size,
        "timed_updates": args.max_train_steps - args.benchmark_warmup,
        "loop_images_per_s": loop_images_per_s,
        "bare_step_images_per_s": bare,
        "bare_step_images_per_s_before_and_after": [bare_before, bare_after],
        "loop_vs_bare": loop_images_per_s / bare,
        "device": str(accelerator.device),
    }


def replica_checksums(model: torch.nn.Module, accelerator) -> list[float]:
    """One float64 checksum of all weights per process: equal values mean the replicas are in sync."""
    total = sum(p.detach().double().sum() * (i + 1) for i, p in enumerate(model.parameters()))
    gathered = accelerator.gather(total.reshape(1).to(accelerator.device))
    return [float(x) for x in gathered.cpu()]


def public_arguments(args: dict) -> dict:
    """Arguments safe to log, save and push: secrets are dropped (Transformers' example logs the Hub token)."""
    return {key: value for key, value in args.items() if "token" not in key.lower()}
