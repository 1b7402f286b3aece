"""What a run writes: args.json, history.jsonl, training_curves.png, results.json and the models, all atomically."""

import json
import math
import os
import tempfile
from pathlib import Path

import torch

from .history import RunHistory


def results(*, history: RunHistory, summary: dict, state, model, args, source: str) -> dict:
    """results.json: the paper's figures (percent) first, then what identifies and sizes the run.

    `state` is the run's TrainState after its counts were gathered from every process.
    """
    last = history.rows[-1] if history.rows else {}
    wall_time = state.wall_time()
    return {
        **history.summary(),
        "strategy": model.config.reduction_strategy,
        "seed": args.seed,
        "parameters": summary["num_parameters"],
        "mlp_parameters": summary["mlp_parameters"],
        "gmacs": summary["gmacs"],
        "epochs": (last.get("epoch", -1) + 1),
        "steps": state.step,
        "wall_time_s": wall_time,
        "train_images_per_s": state.seen / wall_time if wall_time else 0.0,
        "eval_samples": last.get("model_count", 0),
        "bad_train_images": len(state.bad_train_images),
        "data": source,
    }


def save_model(accelerator, model, processor, path) -> None:
    """`save_pretrained` from every process (each holds its shard under FSDP), the image processor beside it."""
    accelerator.unwrap_model(model).save_pretrained(
        path,
        state_dict=accelerator.get_state_dict(model),
        is_main_process=accelerator.is_main_process,
        save_function=accelerator.save,
    )
    if accelerator.is_main_process:
        processor.save_pretrained(path)


def replace_atomically(path: str | os.PathLike, write) -> None:
    """Write a file completely or not at all: `write(temporary)` fills a file beside `path`, which is then renamed
    into place, so a crash leaves the previous version, never half of a new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix or ".tmp")
    os.close(handle)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)  # mkstemp creates 0600; results are meant to be shared
    try:
        write(temporary)
        with open(temporary, "rb+") as stream:
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_atomic(path: str | os.PathLike, text: str) -> None:
    replace_atomically(path, lambda temporary: Path(temporary).write_text(text, encoding="utf-8"))


def write_json(path, data) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_history(path, history: RunHistory) -> None:
    write_atomic(path, "".join(json.dumps(row, default=_json_default) + "\n" for row in history.rows))


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
    losses.plot(epochs, [row["train_loss"] for row in history.rows], label="train (mixup targets)")
    losses.plot(epochs, [row["loss"] for row in history.rows], label="validation")
    losses.set_xlabel("epoch")
    losses.set_ylabel("loss")
    losses.legend()
    accuracy.plot(epochs, [row["top1"] for row in history.rows], label="reported top-1")
    if any("model_top1" in row for row in history.rows):
        accuracy.plot(epochs, [row.get("model_top1", math.nan) for row in history.rows], label="model top-1")
    if history.rows:
        peak = history.peak
        accuracy.scatter([peak["epoch"]], [peak["top1"]], color="red", zorder=3, label="peak")
    accuracy.set_xlabel("epoch")
    accuracy.set_ylabel("top-1 (%)")
    accuracy.legend()
    figure.suptitle(title)
    figure.tight_layout()
    replace_atomically(path, lambda temporary: figure.savefig(temporary, dpi=100, format="png"))
    plt.close(figure)


def replica_checksums(model: torch.nn.Module, accelerator) -> list[float]:
    """One float64 checksum of all weights per process: equal values mean the replicas are in sync."""
    total = sum(p.detach().double().sum() * (i + 1) for i, p in enumerate(model.parameters()))
    gathered = accelerator.gather(total.reshape(1).to(accelerator.device))
    return [float(x) for x in gathered.cpu()]


def public_arguments(args: dict) -> dict:
    """Arguments safe to log, save and push: secrets are dropped (Transformers' example logs the Hub token)."""
    return {key: value for key, value in args.items() if "token" not in key.lower()}
