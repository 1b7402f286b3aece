"""What a run writes: args.json, history.jsonl, training_curves.png, results.json and the models, all atomically."""

import errno
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import torch

from .history import RunHistory

# What a write onto a full disk (or past a quota) raises: OSError with one of these codes; safetensors says it in
# words; torch.save's zip writer only raises RuntimeError("... unexpected pos ..."), so for it the disk is asked.
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
NO_SPACE_WORDS = (os.strerror(errno.ENOSPC), os.strerror(errno.EDQUOT))
NEARLY_FULL_BYTES = 1 << 20


class DiskFullError(RuntimeError):
    """A write that found no space left; the message names the folder, the space needed and the space free."""

    def __init__(self, folder, what: str, needed: str):
        self.folder = Path(folder)
        free = shutil.disk_usage(_existing(self.folder)).free
        super().__init__(
            f"no space left in {self.folder} for {what}: it needs {needed}, {human_size(free)} is free there"
        )


def human_size(count: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError  # the loop always returns


def folder_size(path) -> int:
    return sum(file.stat().st_size for file in Path(path).rglob("*") if file.is_file())


def _existing(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def is_no_space(error: BaseException, folder) -> bool:
    """Whether a failed write failed for want of space in `folder` (ask while its partial files still exist)."""
    if isinstance(error, DiskFullError):
        return True
    if isinstance(error, OSError):
        return error.errno in NO_SPACE
    if any(words in str(error) for words in NO_SPACE_WORDS):
        return True
    return isinstance(error, RuntimeError) and shutil.disk_usage(_existing(Path(folder))).free < NEARLY_FULL_BYTES


def write_together(accelerator, write, *, folder, what: str, needed) -> None:
    """Run `write()` on every process; when any of them finds the disk full, raise `DiskFullError` on all of them.

    The processes agree in one collective, so none raises alone and leaves the others waiting in the next one.
    `needed` gives the space it needed, as words, once the write failed.
    """
    failed = False
    try:
        write()
    except Exception as error:
        if not is_no_space(error, folder):
            raise
        failed = True
    if accelerator.num_processes > 1:
        failed = bool(accelerator.reduce(torch.tensor([float(failed)], device=accelerator.device), "sum").item())
    if failed:
        raise DiskFullError(folder, what, needed())


def results(*, history: RunHistory, summary: dict, state, model, seed: int, source: str) -> dict:
    """results.json: the paper's figures (percent) first, then what identifies and sizes the run.

    `state` is the run's TrainState after its counts were gathered from every process.
    """
    last = history.rows[-1] if history.rows else {}
    wall_time = state.wall_time()
    return {
        **history.summary(),
        "strategy": model.config.reduction_strategy,
        "seed": seed,
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
    """`save_pretrained` from every process (each holds its shard under FSDP), the image processor beside it.

    Raises `DiskFullError` on every process when the disk is full.
    """
    state_dict = accelerator.get_state_dict(model)

    def write():
        accelerator.unwrap_model(model).save_pretrained(
            path, state_dict=state_dict, is_main_process=accelerator.is_main_process, save_function=accelerator.save
        )
        if accelerator.is_main_process:
            processor.save_pretrained(path)

    def needed() -> str:
        unique = {t.untyped_storage().data_ptr(): t.numel() * t.element_size() for t in state_dict.values()}
        return f"about {human_size(sum(unique.values()))} (its weights)"

    write_together(accelerator, write, folder=path, what="the model", needed=needed)


def replace_atomically(path: str | os.PathLike, write, *, size: int | None = None) -> None:
    """Write a file completely or not at all: `write(temporary)` fills a file beside `path`, which is then renamed
    into place, so a crash leaves the previous version, never half of a new one. A full disk raises
    `DiskFullError` (the previous version stays); `size`, when known, is what the file needs."""
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
    except BaseException as error:
        written = Path(temporary).stat().st_size if Path(temporary).exists() else 0
        no_space = isinstance(error, Exception) and is_no_space(error, path.parent)
        Path(temporary).unlink(missing_ok=True)
        if no_space:
            needed = human_size(size) if size is not None else f"more than the {human_size(written)} written"
            raise DiskFullError(path.parent, path.name, needed) from error
        raise


def write_atomic(path: str | os.PathLike, text: str) -> None:
    data = text.encode("utf-8")
    replace_atomically(path, lambda temporary: Path(temporary).write_bytes(data), size=len(data))


def jsonable(data):
    """`data` as it reads back from a JSON file (tuples as lists, paths as strings)."""
    return json.loads(json.dumps(data, default=_json_default))


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
