"""The GPU check's steps, run by `.ci/gpu-check` (which first installs the carried wheels).

    .ci/gpu-check --skip train                # call 1 on the lent GPU machine: benchmark and loop (ViT-B/16, bf16)
    .ci/gpu-check --skip benchmark loop       # call 2: the training run and evaluate
    .ci/gpu-check --device cpu                # the smoke run: every step at tiny sizes, eager; the H100 estimate

Steps, each a command of this project run as a user runs it, timed, its output kept in gpu-check.log:
  environment  the versions in use, and every module the steps import (a missing one is named here)
  benchmark    `hf-vit-reduction benchmark --bench train`: our baseline and shallow beside timm's ViT, training
               steps, eager and compiled (the three models the targets compare; one graph each)
  photos       an ImageNet-layout folder of JPEGs (500 x 375, cut from scikit-learn's sample photos), as many as
               the steps that run read
  loop         `train --benchmark_loop`: the engine's loop on in-memory data against the bare step, eager
  train        a paper-recipe run of shallow on the folder (100 updates on the GPU, 8 workers, --torch_compile)
  evaluate     `hf-vit-reduction evaluate` on that run
A lent machine gives 15 minutes in all, start included: the two calls above are sized to about 4 minutes each on an
H100 (the smoke run's estimate, `CALLS`), each under the device's 5-minute budget per call with its start.
Then gpu-check.json (every figure, the targets met or missed) and gpu-check.md (the tables) under $OUT or --out.
A step that fails is reported as failed with its last lines and the check exits 1; the other steps still run where
they do not depend on it.
"""

import argparse
import importlib
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULES = ("torch", "torchvision", "transformers", "timm", "accelerate", "datasets", "evaluate", "huggingface_hub")
MODULES_IMPORTED = (*MODULES, "safetensors", "PIL", "sklearn", "scipy", "matplotlib", "tqdm", "pandas", "pyarrow")
PHOTO_SIZE = (500, 375)  # an average ImageNet photo

# Sizes of each step: on the GPU, what the issue asks for (ViT-B/16, 224 px); on a CPU, the smallest that runs the
# same code paths. Compile is left to the GPU: on 2 CPU cores inductor takes about a minute per graph.
SIZES = {
    "cuda": {
        "benchmark": [
            *("--preset", "base", "--models", "baseline", "shallow", "timm", "--bench", "train", "--compile"),
            *("--warmup", "3", "--repeats", "5", "--steps", "10"),
        ],
        "train_images": 6_144,  # 12 paper-recipe updates (512 images) an epoch: 100 updates in 9 epochs
        "validation_images": 512,  # one evaluation batch (2 x 256): no second graph for a smaller last batch
        "model": [],  # the paper recipe's ViT-B/16 at 224 px
        # 16 updates of 128 in-memory images an epoch, 8 of them warm-up.
        "loop": [
            *("--max_train_samples", "2048", "--batch_size", "128", "--grad_accum_steps", "1"),
            *("--max_train_steps", "40", "--benchmark_warmup", "8"),
        ],
        "train": ["--max_train_steps", "100", "--workers", "8", "--checkpointing_steps", "50"],
        "compile": ["--torch_compile"],  # the training run's (the benchmark compiles its own)
        "evaluate": ["--eval_batch_size", "256", "--mixed_precision", "bf16"],
    },
    "cpu": {
        "benchmark": [
            *("--device", "cpu", "--preset", "digits", "--image_size", "16", "--num_labels", "10"),
            *("--batch_size", "2", "--train_batch_size", "2", "--warmup", "1", "--repeats", "1", "--steps", "1"),
            *("--threads", "1", "--no_compile"),
        ],
        "train_images": 32,
        "validation_images": 8,
        "model": ["--model_size", "digits", "--image_size", "32", "--batch_size", "4", "--grad_accum_steps", "1"],
        "loop": ["--max_train_samples", "16", "--max_train_steps", "6", "--benchmark_warmup", "2"],
        "train": ["--max_train_steps", "8", "--workers", "2", "--checkpointing_steps", "4"],
        "compile": [],
        "evaluate": ["--eval_batch_size", "8"],
    },
}
TARGETS = {  # name: (what, goal)
    "baseline_compiled_vs_timm_compiled_training": ("our baseline compiled / timm's compiled ViT, training", 1.10),
    "shallow_vs_baseline_training": ("shallow / baseline, training, compiled", 1.42),
    "loop_vs_bare_step": ("the engine's loop / the bare step", 0.90),
    "compiled_vs_eager_worst": ("compiled / eager, the worst of the benchmark's models and steps", 1.0),
}
# The check's two calls on a lent machine (`--skip` of each) and the steps each runs.
CALLS = {
    "call 1": (["train"], ("environment", "benchmark", "photos", "loop")),
    "call 2": (["benchmark", "loop"], ("environment", "photos", "train", "evaluate")),
}
# What the H100 estimate assumes beyond the smoke run's measurements (figures from DESIGN.md, measured on one H100
# in bf16 by others, and one assumption): the slowest ViT-B/16 anchor's rates, so the work is not underestimated.
H100 = {
    "training_images_per_s": 2_350,  # Transformers' ViT-B/16, eager (timm's compiled: 3,114)
    "inference_images_per_s": 6_236,  # Transformers' ViT-B/16, compiled (the slowest measured)
    "compile_s_per_graph": 45.0,  # assumed: inductor on ViT-B/16, cold cache, 16 cores (train and eval graphs)
    "checkpoint_s": 4.0,  # assumed: ~1 GB (weights, AdamW state, EMA) to a local disk
}


class Check:
    def __init__(self, device: str, out: Path, work: Path):
        self.device, self.out, self.work = device, out, work
        self.sizes = SIZES[device]
        self.log = (out / "gpu-check.log").open("w")
        self.steps: dict[str, dict] = {}
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        if device == "cpu":
            self.env |= {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}

    def run(self, name: str, command: list[str], *, timeout: float = 1800) -> bool:
        """Run one step's command; record its status, seconds and, on failure, its last lines."""
        print(f"== {name}: {shlex.join(command)}", file=self.log, flush=True)
        print(f"gpu-check: {name} ...", flush=True)
        start = time.perf_counter()
        try:
            result = subprocess.run(
                command, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
            )
            output, status = result.stdout + result.stderr, ("passed" if result.returncode == 0 else "failed")
            code = result.returncode
        except subprocess.TimeoutExpired as expired:
            output, status, code = f"{expired.stdout or ''}{expired.stderr or ''}", "failed", None
            output = output if isinstance(output, str) else output.decode(errors="replace")
            output += f"\n(stopped after {timeout:.0f} s)"
        seconds = time.perf_counter() - start
        self.log.write(output + f"\n== {name}: {status} in {seconds:.1f} s (exit status {code})\n")
        self.log.flush()
        self.steps[name] = {"status": status, "seconds": seconds, "command": shlex.join(command)}
        if status != "passed":
            self.steps[name]["last_lines"] = output.strip().splitlines()[-15:]
        print(f"gpu-check: {name} {status} in {seconds:.1f} s", flush=True)
        return status == "passed"

    def skip(self, name: str, reason: str) -> None:
        self.steps[name] = {"status": "failed", "seconds": 0.0, "last_lines": [f"not run: {reason}"]}

    def python(self, *args: str) -> list[str]:
        return [sys.executable, *args]

    def project(self, *args: str) -> list[str]:
        return self.python("-m", "hf_vit_reduction", *args)


def environment_report() -> dict:
    """Versions, the device, and the modules the steps import that are missing."""
    report, missing = {"python": sys.version.split()[0]}, []
    for name in MODULES_IMPORTED:
        try:
            module = importlib.import_module(name)
        except ImportError as error:
            missing.append(f"{name} ({error})")
            continue
        if name in MODULES:
            report[name] = getattr(module, "__version__", "?")
    import torch

    report["cuda"] = torch.version.cuda
    report["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    report["cpu_cores"] = len(os.sched_getaffinity(0))
    report["missing"] = missing
    return report


def photo(arguments: tuple) -> None:
    folder, index, count = arguments
    from hf_vit_reduction.study.data_benchmark import make_photo_folder

    make_photo_folder(folder, size=PHOTO_SIZE, count=count, seed=index)


def make_photos(folder: Path, count: int, *, processes: int) -> None:
    """`count` JPEGs in ImageNet's layout (`<class>/<n>.jpg`), written by `processes` in parallel."""
    shares = [count // processes + (i < count % processes) for i in range(processes)]
    jobs = [(folder / f"part{i}", i, share) for i, share in enumerate(shares) if share]
    with ProcessPoolExecutor(len(jobs)) as pool:
        list(pool.map(photo, jobs))
    for part, _, _ in jobs:  # one folder per class, as ImageNet's: the parts' classes merged
        for image in part.glob("*/*.jpg"):
            target = folder / image.parent.name / f"{part.name}-{image.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            image.rename(target)
        for empty in sorted(part.glob("*"), reverse=True):
            empty.rmdir()
        part.rmdir()


def benchmark_figures(results: dict) -> dict:
    rows = {(row["model"], row["mode"]): row for row in results["rows"]}
    figures = {}
    compiled = "compiled" if any(mode == "compiled" for _, mode in rows) else "eager"  # eager: the smoke run's
    figures["benchmark_mode"] = compiled
    baseline, timm, shallow = (rows.get((name, compiled)) for name in ("baseline", "timm", "shallow"))
    if baseline and timm:
        figures["baseline_compiled_vs_timm_compiled_training"] = (
            baseline["training_images_per_s"] / timm["training_images_per_s"]
        )
    if baseline and shallow:
        figures["shallow_vs_baseline_training"] = shallow["training_images_per_s"] / baseline["training_images_per_s"]
    ratios = [
        rows[(name, "compiled")][f"{kind}_images_per_s"] / rows[(name, "eager")][f"{kind}_images_per_s"]
        for name, mode in rows
        if mode == "eager" and (name, "compiled") in rows
        for kind in ("inference", "training")
        if rows[(name, "eager")][f"{kind}_images_per_s"] is not None  # a kind left out by --bench
    ]
    if ratios:
        figures["compiled_vs_eager_worst"] = min(ratios)
    return figures


def h100_estimate(check: Check, report: dict) -> dict:
    """Seconds the GPU sizes would take on an H100, per call of `CALLS` and in all: each step's fixed cost as this
    smoke run measured it (process start, imports, setup), plus the GPU sizes' work at the `H100` rates, compile and
    checkpoints included."""
    smoke = {name: step["seconds"] for name, step in check.steps.items()}
    gpu = SIZES["cuda"]

    def flag(args, name):
        return float(args[args.index(name) + 1])

    def values(args, name):  # a list flag's values: those after it up to the next flag
        rest = args[args.index(name) + 1 :]
        return rest[: next((i for i, arg in enumerate(rest) if arg.startswith("--")), len(rest))]

    bench = gpu["benchmark"]
    models, kinds = len(values(bench, "--models")), values(bench, "--bench")[0]
    seconds_per_step = {
        "train": 128 / H100["training_images_per_s"],
        "inference": 256 / H100["inference_images_per_s"],
    }
    seconds_per_step["both"] = seconds_per_step["train"] + seconds_per_step["inference"]
    steps_per_model = flag(bench, "--warmup") + flag(bench, "--repeats") * flag(bench, "--steps")
    benchmark = 2 * models * steps_per_model * seconds_per_step[kinds]  # eager and compiled
    benchmark += models * (2 if kinds == "both" else 1) * H100["compile_s_per_graph"]
    # Photos: written by 16 processes at the rate this run wrote them on one; each call writes what its steps read.
    photo_rate = (SIZES["cpu"]["train_images"] + SIZES["cpu"]["validation_images"]) / max(smoke.get("photos", 0), 1e-3)
    loop_images = flag(gpu["loop"], "--max_train_samples")
    photos = {
        call: (gpu["train_images"] if "train" in steps else loop_images) + gpu["validation_images"]
        for call, (_, steps) in CALLS.items()
    }
    loop = loop_images * report.get("decode_seconds_per_image", 0.01)  # decoded into memory first, then eager
    loop += (
        3 * flag(gpu["loop"], "--max_train_steps") * flag(gpu["loop"], "--batch_size") / H100["training_images_per_s"]
    )
    updates, per_update = flag(gpu["train"], "--max_train_steps"), 256 * 2  # the paper's batch: 256 x 2 accumulated
    data_rate = flag(gpu["train"], "--workers") * report.get("worker_images_per_s", 100.0)
    train = updates * per_update / min(H100["training_images_per_s"], data_rate)
    # Three graphs (the training step; evaluation of the model and of its EMA), a checkpoint every
    # --checkpointing_steps and the final one with the saved model's files.
    checkpoints = updates / flag(gpu["train"], "--checkpointing_steps") + 4
    train += 3 * H100["compile_s_per_graph"] + checkpoints * H100["checkpoint_s"]
    train += 2 * gpu["validation_images"] / min(H100["inference_images_per_s"], data_rate)
    evaluate = gpu["validation_images"] / min(H100["inference_images_per_s"], data_rate)
    work = {"benchmark": benchmark, "loop": loop, "train": train, "evaluate": evaluate}
    calls = {}
    for call, (_, steps) in CALLS.items():
        seconds = {name: smoke.get(name, 0.0) + work.get(name, 0.0) for name in steps}
        seconds["photos"] = smoke.get("photos", 0.0) + photos[call] / (16 * photo_rate)
        calls[call] = {"skip": CALLS[call][0], "seconds": sum(seconds.values()), "steps": seconds}
    return {
        "seconds": sum(call["seconds"] for call in calls.values()),
        "calls": calls,
        "assumed": H100,
        "measured_here": {
            "step_seconds": smoke,
            "photos_per_s_one_process": photo_rate,
            "worker_images_per_s": report.get("worker_images_per_s"),
        },
        "note": "an estimate: fixed costs measured by this CPU smoke run, GPU work at the rates above",
    }


def worker_rate(folder: Path) -> dict:
    """One loader worker's uint8 images/s on the photos (the paper's transforms at 224 px, the batch work left to
    the device as on a GPU machine), and its seconds per image."""
    from hf_vit_reduction.study.data_benchmark import OurPipeline, worker_batches_per_second

    batch_size = 4
    rate = batch_size * worker_batches_per_second(OurPipeline(folder, 1, batch_size, 224), warmup=1)
    return {"worker_images_per_s": rate, "decode_seconds_per_image": 1 / rate}


def format_markdown(report: dict) -> str:
    lines = [f"# GPU check: {report['environment'].get('device', '?')} ({report['device']})", ""]
    lines += [f"Started {report['started']}; load average at the end {report['load_average'][0]:.2f}.", ""]
    lines += ["| step | status | seconds |", "|---|---|---:|"]
    lines += [f"| {name} | {step['status']} | {step['seconds']:.1f} |" for name, step in report["steps"].items()]
    if report.get("targets"):
        mode = report.get("benchmark_mode", "compiled")
        lines += ["", f"Targets (benchmark rows: {mode})", ""]
        lines += ["| target | measured | goal | |", "|---|---:|---:|---|"]
        for target in report["targets"].values():
            measured = "–" if target["measured"] is None else f"{target['measured']:.2f}"
            verdict = {True: "met", False: "missed", None: "not measured"}[target["met"]]
            lines.append(f"| {target['what']} | {measured} | {target['goal']:.2f} | {verdict} |")
    if report.get("benchmark_table"):
        lines += ["", report["benchmark_table"]]
    if report.get("loop"):
        loop = report["loop"]
        lines += [
            "",
            (
                f"Loop: {loop['loop_images_per_s']:,.1f} img/s against the bare step's "
                f"{loop['bare_step_images_per_s']:,.1f} ({loop['loop_vs_bare']:.3f}), batch {loop['batch_size']}, "
                f"{loop['timed_updates']} timed updates."
            ),
        ]
    if report.get("train"):
        train = report["train"]
        lines += [
            "",
            (
                f"Training run ({train['strategy']}, {train['steps']} updates): "
                f"{train['train_images_per_s']:,.1f} img/s end to end, final top-1 {train['final_top1']:.2f}% "
                "(two classes of photo crops: the pipeline is what is judged)."
            ),
        ]
    if report.get("h100_estimate"):
        estimate = report["h100_estimate"]
        per_call = ", ".join(
            f"{call} (--skip {' '.join(c['skip'])}) {c['seconds'] / 60:.1f} min"
            for call, c in estimate["calls"].items()
        )
        lines += [
            "",
            f"H100 estimate for the GPU sizes: {estimate['seconds'] / 60:.1f} min: {per_call} ({estimate['note']}).",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--out", default=os.environ.get("OUT"), help="where the report goes (default: $OUT)")
    parser.add_argument("--work", default=None, help="scratch folder (default: a fresh one under /tmp)")
    parser.add_argument(
        "--skip",
        nargs="+",
        choices=("benchmark", "loop", "train"),
        default=[],
        help="steps to leave out (train: and evaluate), e.g. to split the check over two calls",
    )
    args = parser.parse_args(argv)
    if not args.out:
        parser.error("--out is not set and neither is $OUT; allowed: a folder for gpu-check.json and gpu-check.md")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work or f"/tmp/gpu-check-{os.getpid()}")
    work.mkdir(parents=True, exist_ok=True)
    check = Check(args.device, out, work)
    sizes = check.sizes
    report: dict = {"device": args.device, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}

    start = time.perf_counter()
    report["environment"] = environment_report()
    check.steps["environment"] = {
        "status": "passed" if not report["environment"]["missing"] else "failed",
        "seconds": time.perf_counter() - start,
    }
    if args.device == "cuda" and report["environment"]["device"] == "cpu":
        check.steps["environment"] |= {"status": "failed", "last_lines": ["no GPU visible to torch"]}

    if "benchmark" in args.skip:
        check.skip("benchmark", "--skip benchmark")
    elif check.run(
        "benchmark", check.project("benchmark", *sizes["benchmark"], "--output_json", str(work / "b.json"))
    ):
        results = json.loads((work / "b.json").read_text())
        from hf_vit_reduction.study.benchmark import format_table

        report["benchmark"], report["benchmark_table"] = results, format_table(results)

    start = time.perf_counter()
    train_dir, validation_dir = work / "photos" / "train", work / "photos" / "validation"
    processes = min(16, len(os.sched_getaffinity(0)))
    try:
        # The loop reads its --max_train_samples; the training run, the whole folder.
        loop_images = int(sizes["loop"][sizes["loop"].index("--max_train_samples") + 1])
        make_photos(train_dir, loop_images if "train" in args.skip else sizes["train_images"], processes=processes)
        make_photos(validation_dir, sizes["validation_images"], processes=processes)
        check.steps["photos"] = {"status": "passed", "seconds": time.perf_counter() - start}
    except Exception as error:  # noqa: BLE001 — reported as the step's failure, the check goes on
        check.steps["photos"] = {
            "status": "failed",
            "seconds": time.perf_counter() - start,
            "last_lines": [repr(error)],
        }
    photos_ready = check.steps["photos"]["status"] == "passed"
    if args.device == "cpu" and photos_ready:
        report |= worker_rate(train_dir)

    data = ["--train_dir", str(train_dir), "--validation_dir", str(validation_dir), "--report_to", "none"]
    if not photos_ready:
        for name in ("loop", "train", "evaluate"):
            check.skip(name, "the photos were not written")
    else:
        loop_dir = work / "loop"
        command = [*data, *sizes["model"], *sizes["loop"], "--strategy", "baseline"]
        command += ["--benchmark_loop", "--workers", "0", "--output_dir", str(loop_dir)]
        if "loop" in args.skip:
            check.skip("loop", "--skip loop")
        elif check.run("loop", check.project("train", *command)):
            report["loop"] = json.loads((loop_dir / "loop_benchmark.json").read_text())
        run_dir = work / "run"
        command = [*data, *sizes["model"], *sizes["train"], *sizes["compile"], "--strategy", "shallow"]
        command += ["--eval_every", "1000", "--output_dir", str(run_dir)]
        if "train" in args.skip:
            for name in ("train", "evaluate"):
                check.skip(name, "--skip train")
        elif check.run("train", check.project("train", *command)):
            report["train"] = json.loads((run_dir / "results.json").read_text())
            report["train"].pop("config", None)
            from hf_vit_reduction.cli import COMMANDS

            if "evaluate" not in COMMANDS:  # built on its own branch; until it is merged this step fails loudly
                check.skip("evaluate", "this checkout has no `hf-vit-reduction evaluate` command")
            else:
                scores = work / "evaluate.json"
                command = [str(run_dir), "--validation_dir", str(validation_dir), "--results_file", str(scores)]
                if check.run("evaluate", check.project("evaluate", *command, *sizes["evaluate"])):
                    report["evaluate"] = json.loads(scores.read_text())
        else:
            check.skip("evaluate", "the training run failed")

    figures = benchmark_figures(report["benchmark"]) if "benchmark" in report else {}
    if "loop" in report:
        figures["loop_vs_bare_step"] = report["loop"]["loop_vs_bare"]
    report["benchmark_mode"] = figures.pop("benchmark_mode", None)
    report["targets"] = {
        name: {
            "what": what,
            "goal": goal,
            "measured": figures.get(name),
            "met": None if figures.get(name) is None else figures[name] >= goal,
        }
        for name, (what, goal) in TARGETS.items()
    }
    report["steps"] = check.steps
    if args.device == "cpu":
        report["h100_estimate"] = h100_estimate(check, report)
    report["load_average"] = os.getloadavg()
    report["seconds"] = sum(step["seconds"] for step in check.steps.values())
    (out / "gpu-check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / "gpu-check.md").write_text(format_markdown(report))
    print(format_markdown(report))
    failed = [
        name
        for name, step in check.steps.items()
        if step["status"] != "passed" and not step.get("last_lines", [""])[0].startswith("not run: --skip")
    ]
    for name in failed:
        print(
            f"error: step {name} failed: {' / '.join(check.steps[name].get('last_lines', [])[-3:])}", file=sys.stderr
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
