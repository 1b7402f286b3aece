"""Throughput of the four strategies beside 🤗 Transformers' ViT and timm's ViT of the same size, in one run.

For each model: inference images/s (eval, no grad) and training-step images/s (forward, backward and a fused AdamW
step, with bf16 autocast on a GPU), eager and (optionally) under `torch.compile` as `train --torch_compile` compiles
(`hf_vit_reduction.training.compile`), the first step's seconds (under compile: the compile), peak memory,
parameters and GMACs.
Models have random weights and channels-last inputs; the dtype is bfloat16 on a GPU and float32 on a CPU. Each
figure is the median of `--repeats` timed runs of `--steps` steps, after `--warmup` steps (the first timed on its
own), with the device synchronized around every timed run; the timed runs go round every model, eager and compiled
alike, so that a change of load falls on all of them. The table gives ratios to both anchors and to our baseline, since absolute
figures move from machine to machine.

    hf-vit-reduction benchmark                                   # ViT-B/16, 224 px, GPU if present
    hf-vit-reduction benchmark --device cpu --batch_size 8 --train_batch_size 8 --no_compile
    hf-vit-reduction benchmark --preset digits --models baseline shallow timm --output_json out.json
    hf-vit-reduction benchmark --models baseline shallow timm --bench train   # training steps only

`--bench inference|train` measures one kind of step (the other's columns are empty): a compiled model costs one
graph per kind.
"""

import argparse
import ctypes
import ctypes.util
import gc
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..cli import command_parser
from ..configuration_vit_reduced import PRESETS, REDUCTION_STRATEGIES, ViTReducedConfig
from ..modeling_vit_reduced import ViTReducedForImageClassification
from ..summary import summarize
from ..training.compile import MODES as COMPILE_MODES
from ..training.compile import compile_model

ANCHORS = ("transformers", "timm")
MODELS = (*REDUCTION_STRATEGIES, *ANCHORS)
MODEL_NAMES = {
    **{strategy: f"ViTReduced {strategy}" for strategy in REDUCTION_STRATEGIES},
    "transformers": "Transformers ViTForImageClassification",
    "timm": "timm vit_base_patch16_224",
}
RATIO_TO = (*ANCHORS, "baseline")
BENCH_KINDS = {"both": ("inference", "training"), "inference": ("inference",), "train": ("training",)}
RATIO_NAMES = {"transformers": "Transformers", "timm": "timm", "baseline": "baseline"}


@dataclass(frozen=True)
class BenchmarkSettings:
    """What one benchmark measures and how, resolved once from the flags (the device's defaults filled in)."""

    models: tuple[str, ...]
    preset: str
    image_size: int | None
    patch_size: int | None
    num_labels: int
    device: torch.device
    dtype: torch.dtype  # inference's; training runs float32 weights under bfloat16 autocast on a GPU
    batch_size: int
    train_batch_size: int
    warmup: int
    repeats: int
    steps: int
    modes: tuple[str, ...]  # ("eager",) or ("eager", "compiled")
    kinds: tuple[str, ...]  # the steps measured: ("inference", "training") or one of them
    torch_compile_mode: str | None
    keep_freed_memory: bool
    output_json: str | None


def _config(settings: BenchmarkSettings, strategy: str = "baseline") -> ViTReducedConfig:
    overrides = {
        field: getattr(settings, field)
        for field in ("image_size", "patch_size")
        if getattr(settings, field) is not None
    }
    return ViTReducedConfig.from_preset(
        settings.preset,
        reduction_strategy=strategy,
        num_labels=settings.num_labels,
        attn_implementation="sdpa",
        **overrides,
    )


def build_model(name: str, config: ViTReducedConfig) -> torch.nn.Module:
    """Model `name` with random weights: ours with `config`, an anchor at the size of the baseline `config`."""
    torch.manual_seed(0)
    if name in REDUCTION_STRATEGIES:
        return ViTReducedForImageClassification(config)
    if name == "transformers":
        from transformers import ViTConfig, ViTForImageClassification

        return ViTForImageClassification(
            ViTConfig(
                hidden_size=config.hidden_size,
                num_hidden_layers=config.num_hidden_layers,
                num_attention_heads=config.num_attention_heads,
                intermediate_size=config.intermediate_size,
                image_size=config.image_size,
                patch_size=config.patch_size,
                num_channels=config.num_channels,
                num_labels=config.num_labels,
                layer_norm_eps=config.layer_norm_eps,
                attn_implementation="sdpa",
            )
        )
    import timm

    # vit_base_patch16_224 itself at the base preset; its architecture resized otherwise.
    return timm.create_model(
        "vit_base_patch16_224",
        pretrained=False,
        num_classes=config.num_labels,
        img_size=config.image_size,
        patch_size=config.patch_size,
        in_chans=config.num_channels,
        embed_dim=config.hidden_size,
        depth=config.num_hidden_layers,
        num_heads=config.num_attention_heads,
        mlp_ratio=config.intermediate_size / config.hidden_size,
    )


def _logits(name: str, model):
    if name == "timm":
        return model
    return lambda pixels: model(pixel_values=pixels).logits


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory instead of returning it to the OS; False where it cannot.

    Memory returned to the OS costs page faults when it is allocated again, and how much is returned depends on the
    heap's history: in one process, on which model was built first. On this project's 2-core CPU that cost the
    first-built model 3-5% of its inference against models running the same kernels. Kept, every model runs on
    already-mapped pages.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        # M_TRIM_THRESHOLD (-1) as high as it goes; M_MMAP_THRESHOLD (-3) at glibc's 64-bit maximum, 32 MiB.
        return bool(libc.mallopt(-1, 2**31 - 1) and libc.mallopt(-3, 32 * 2**20))
    except (OSError, AttributeError):
        return False


def _synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _pixels(config, batch_size: int, device, dtype) -> torch.Tensor:
    return torch.randn(
        batch_size,
        config.num_channels,
        config.image_size,
        config.image_size,
        device=device,
        dtype=dtype,
    ).contiguous(memory_format=torch.channels_last)


def inference_step(name, config, settings: BenchmarkSettings, compiled: bool):
    """A callable running one eval forward pass without autograd on a fresh model `name`."""
    model = build_model(name, config).to(device=settings.device, dtype=settings.dtype).eval()
    model = model.to(memory_format=torch.channels_last)
    forward = _logits(name, compile_model(model, mode=settings.torch_compile_mode) if compiled else model)
    pixels = _pixels(config, settings.batch_size, settings.device, settings.dtype)

    def step():
        with torch.inference_mode():
            forward(pixels)

    return step


def training_step(name, config, settings: BenchmarkSettings, compiled: bool):
    """A callable running one training step (forward, backward, fused AdamW) on a fresh model `name`."""
    device = settings.device
    model = build_model(name, config).to(device).train()
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    forward = _logits(name, compile_model(model, mode=settings.torch_compile_mode) if compiled else model)
    pixels = _pixels(config, settings.train_batch_size, device, torch.float32)
    labels = torch.randint(config.num_labels, (settings.train_batch_size,), device=device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = F.cross_entropy(forward(pixels), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def measure(make_step, configs: dict, batch_size: int, settings: BenchmarkSettings) -> dict:
    """{(name, mode): (images/s, peak MiB or None, first step's seconds)} of each model's step in each mode (eager,
    compiled), timed round-robin.

    Every model is built in every mode and warmed up first (its first step timed on its own: compiled, the graphs'
    build); then each repeat times every model in every mode in turn, so that a change in the machine's load during
    the run falls on all of them alike, compiled and eager too. Peak memory (CUDA only) is what a model allocated
    from its construction to the end of its warm-up: weights, activations and, in training, gradients and AdamW
    state.
    """
    device, steps, memory, first = settings.device, {}, {}, {}
    keys = [(name, mode) for mode in settings.modes for name in configs]
    for name, mode in keys:
        gc.collect()
        if device.type == "cuda":
            allocated = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
        key = (name, mode)
        steps[key] = make_step(name, configs[name], settings, compiled=mode == "compiled")
        _synchronize(device)
        start = time.perf_counter()
        steps[key]()
        _synchronize(device)
        first[key] = time.perf_counter() - start
        for _ in range(settings.warmup - 1):
            steps[key]()
        _synchronize(device)
        memory[key] = (torch.cuda.max_memory_allocated(device) - allocated) / 2**20 if device.type == "cuda" else None
    times = {key: [] for key in keys}
    for _ in range(settings.repeats):
        for key, step in steps.items():
            _synchronize(device)
            start = time.perf_counter()
            for _ in range(settings.steps):
                step()
            _synchronize(device)
            times[key].append(time.perf_counter() - start)
    del steps
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {
        key: (batch_size * settings.steps / statistics.median(times[key]), memory[key], first[key]) for key in keys
    }


def _machine(device: torch.device) -> dict:
    import timm
    import transformers

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as cpuinfo:
                name = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
    return {
        "device": name,
        "device_type": device.type,
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "timm": timm.__version__,
    }


def run(settings: BenchmarkSettings) -> dict:
    """Measure every model in `settings.models`; the rows of the table and the settings they were measured with."""
    base = _config(settings)
    configs = {name: _config(settings, name) if name in REDUCTION_STRATEGIES else base for name in settings.models}
    load_before = os.getloadavg()
    rows = []
    if "compiled" in settings.modes:
        torch._dynamo.reset()
    steps = {
        "inference": (inference_step, settings.batch_size),
        "training": (training_step, settings.train_batch_size),
    }
    # A kind not measured gives None in each of its row's fields (a compile costs about a minute a graph on a GPU).
    measured = {
        kind: measure(step, configs, batch_size, settings) if kind in settings.kinds else {}
        for kind, (step, batch_size) in steps.items()
    }
    for mode in settings.modes:
        for name, config in configs.items():
            with torch.device("meta"):
                model = build_model(name, config)
            key = (name, mode)
            rows.append(
                {
                    "model": name,
                    "name": MODEL_NAMES[name],
                    "mode": mode,
                    "parameters": sum(p.numel() for p in model.parameters()),
                    "gmacs": summarize(config)["gmacs"],
                    **{
                        f"{kind}_{field}": measured[kind].get(key, (None, None, None))[index]
                        for kind in steps
                        for index, field in enumerate(("images_per_s", "peak_memory_mib", "first_step_s"))
                    },
                }
            )
    for row in rows:
        for kind in ("inference", "training"):
            for reference in RATIO_TO:
                match = [r for r in rows if r["model"] == reference and r["mode"] == row["mode"]]
                row[f"{kind}_vs_{reference}"] = (
                    row[f"{kind}_images_per_s"] / match[0][f"{kind}_images_per_s"]
                    if match and row[f"{kind}_images_per_s"] is not None
                    else None
                )
    recorded = {
        "preset": settings.preset,
        "image_size": base.image_size,
        "patch_size": base.patch_size,
        "num_labels": base.num_labels,
        "device": str(settings.device),
        "dtype": str(settings.dtype).removeprefix("torch."),
        "training_autocast": "bfloat16" if settings.device.type == "cuda" else None,
        "optimizer": "AdamW(fused=True)",
        "batch_size": settings.batch_size,
        "train_batch_size": settings.train_batch_size,
        "warmup_steps": settings.warmup,
        "repeats": settings.repeats,
        "steps_per_repeat": settings.steps,
        "compile": "compiled" in settings.modes,
        "bench": list(settings.kinds),
        "torch_compile_mode": settings.torch_compile_mode,
        "memory_format": "channels_last",
        "attention": "sdpa",
        "keep_freed_memory": settings.keep_freed_memory,
    }
    peak_memory = (
        "CUDA memory a model allocated from its construction to the end of its warm-up: weights, "
        "activations and, in training, gradients and AdamW state"
        if settings.device.type == "cuda"
        else "not measured on CPU (null): the process's resident set does not return to a baseline between "
        "models, so its growth would not be the model's"
    )
    return {
        "settings": recorded,
        "machine": _machine(settings.device),
        "gmacs": "the paper's convention (hf_vit_reduction.summary); the anchors share the baseline's architecture",
        "peak_memory": peak_memory,
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "rows": rows,
    }


def _number(value, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _rate(value: float | None) -> str:
    # CPU rates are a few images/s: three significant digits there, whole images/s on a GPU.
    if value is None:
        return "–"
    return f"{value:,.0f}" if value >= 100 else f"{value:#.3g}"


def _gmacs(value: float) -> str:
    return f"{value:.2f}" if value >= 1 else f"{value:#.3g}"


def format_table(results: dict) -> str:
    """The results as a markdown table, with a line saying how they were measured."""
    s, machine = results["settings"], results["machine"]
    described = (
        f"{machine['device']} ({s['device']}, {machine['cpu_threads']} CPU threads), torch {machine['torch']}: "
        f"{s['dtype']}, batch {s['batch_size']} inference / {s['train_batch_size']} training, median of "
        f"{s['repeats']} x {s['steps_per_repeat']} steps after {s['warmup_steps']} warm-up steps."
        + (" glibc keeps freed memory." if s.get("keep_freed_memory") else "")
    )
    ratios = " | ".join(f"× {RATIO_NAMES[ref]}" for ref in RATIO_TO)
    lines = [
        described,
        "",
        f"| model | mode | parameters | GMACs | inference img/s | {ratios} | training img/s | {ratios} | "
        + "first step s (inference / training; compiled: the compile) | peak memory MiB (inference / training) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results["rows"]:
        cells = [
            row["name"],
            row["mode"],
            f"{row['parameters']:,}",
            _gmacs(row["gmacs"]),
        ]
        for kind in ("inference", "training"):
            cells.append(_rate(row[f"{kind}_images_per_s"]))
            cells += [_number(row[f"{kind}_vs_{ref}"], 2) for ref in RATIO_TO]
        cells.append(f"{_number(row['inference_first_step_s'], 2)} / {_number(row['training_first_step_s'], 2)}")
        cells.append(f"{_number(row['inference_peak_memory_mib'], 0)} / {_number(row['training_peak_memory_mib'], 0)}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if value < 1:
            raise argparse.ArgumentTypeError(f"{text} is not valid; allowed: >= 1")
        return value

    return parse


def parse_args(argv: list[str] | None = None) -> BenchmarkSettings:
    parser = command_parser(
        "benchmark",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--models",
        nargs="+",
        choices=MODELS,
        default=list(MODELS),
        help="models to measure (default: all)",
    )
    parser.add_argument("--preset", default="base", choices=tuple(PRESETS))
    parser.add_argument("--image_size", type=_positive(int))
    parser.add_argument("--patch_size", type=_positive(int))
    parser.add_argument("--num_labels", type=_positive(int), default=1000)
    parser.add_argument("--device", help="cuda or cpu (default: cuda where available)")
    parser.add_argument("--batch_size", type=_positive(int), help="inference (default: 256 GPU, 8 CPU)")
    parser.add_argument(
        "--train_batch_size",
        type=_positive(int),
        help="training (default: 128 GPU, 8 CPU)",
    )
    parser.add_argument(
        "--warmup",
        type=_positive(int),
        help="untimed steps first (default: 10 GPU, 2 CPU)",
    )
    parser.add_argument("--repeats", type=_positive(int), help="timed runs (default: 10 GPU, 5 CPU)")
    parser.add_argument(
        "--steps",
        type=_positive(int),
        help="steps per timed run (default: 10 GPU, 1 CPU)",
    )
    parser.add_argument(
        "--compile",
        dest="compile",
        action="store_true",
        default=None,
        help="also measure torch.compile (default on GPU)",
    )
    parser.add_argument(
        "--no_compile",
        dest="compile",
        action="store_false",
        help="eager only (default on CPU, where inductor's C++ builds take minutes)",
    )
    parser.add_argument("--torch_compile_mode", choices=COMPILE_MODES, help="torch.compile's mode (default: torch's)")
    parser.add_argument(
        "--bench",
        choices=BENCH_KINDS,
        default="both",
        help="the steps to measure, as timm's benchmark.py names them (default: both)",
    )
    parser.add_argument("--threads", type=_positive(int), help="CPU threads (default: torch's)")
    parser.add_argument(
        "--keep_freed_memory",
        action="store_true",
        help="glibc: keep freed memory mapped, so that page faults do not depend on the order models were built "
        "in (see keep_freed_memory)",
    )
    parser.add_argument("--output_json", help="also write the results here")
    args = parser.parse_args(argv)

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.split(":")[0] not in ("cuda", "cpu"):
        parser.error(f"--device {device} is not valid; allowed: cuda, cpu")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda is not valid here: no GPU is available")
    gpu = torch.device(device).type == "cuda"
    defaults = {
        "batch_size": (256, 8),
        "train_batch_size": (128, 8),
        "warmup": (10, 2),
        "repeats": (10, 5),
        "steps": (10, 1),
        "compile": (True, False),
    }
    values = {
        field: (on_gpu if gpu else on_cpu) if getattr(args, field) is None else getattr(args, field)
        for field, (on_gpu, on_cpu) in defaults.items()
    }
    settings = BenchmarkSettings(
        models=tuple(dict.fromkeys(args.models)),
        preset=args.preset,
        image_size=args.image_size,
        patch_size=args.patch_size,
        num_labels=args.num_labels,
        device=torch.device(device),
        dtype=torch.bfloat16 if gpu else torch.float32,
        batch_size=values["batch_size"],
        train_batch_size=values["train_batch_size"],
        warmup=values["warmup"],
        repeats=values["repeats"],
        steps=values["steps"],
        modes=("eager", "compiled") if values["compile"] else ("eager",),
        kinds=BENCH_KINDS[args.bench],
        torch_compile_mode=args.torch_compile_mode,
        keep_freed_memory=args.keep_freed_memory,
        output_json=args.output_json,
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.keep_freed_memory and not keep_freed_memory():
        parser.error("--keep_freed_memory needs glibc's mallopt, which is not available here")
    try:
        _config(settings)
    except ValueError as error:
        parser.error(str(error))
    return settings


def main(argv: list[str] | None = None) -> dict:
    settings = parse_args(argv)
    results = run(settings)
    print(format_table(results))
    if settings.output_json:
        with open(settings.output_json, "w") as file:
            json.dump(results, file, indent=2)
    return results
