"""The paper's study at small scale: the four strategies × 2 seeds on the embedded digits, then the report.

    hf-vit-reduction reproduce --output_dir reproduction
    hf-vit-reduction reproduce --output_dir quick --strategies baseline shallow -- --epochs 5

Each run is `hf-vit-reduction train --strategy S --seed N` with the digits recipe (its default without a data
source), one after another: on 2 CPU cores one run takes about 2.5 minutes, the eight about 20. Flags after `--` go
to every run. Rerunning the command continues: finished runs are kept, a stopped run resumes from its last
checkpoint. It writes OUTPUT/runs/<strategy>-seed<seed>/ (the runs), OUTPUT/logs/ (each run's output) and
OUTPUT/report/ (hf-vit-reduction report on the runs).
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

from tqdm.auto import tqdm

from ..cli import command_parser
from ..configuration_vit_reduced import REDUCTION_STRATEGIES
from ..training.outputs import write_atomic
from .report import RunProblem, load_run, report_runs, results_section

SEEDS = (0, 1)
SETTINGS = "reproduce.json"


def run_name(strategy: str, seed: int) -> str:
    return f"{strategy}-seed{seed}"


def is_finished(run_dir: Path) -> bool:
    try:
        load_run(run_dir)
    except RunProblem:
        return False
    return True


def training_command(strategy: str, seed: int, run_dir: Path, training_arguments: list[str]) -> list[str]:
    """One run's command (`hf-vit-reduction train` in a process of its own); a run stopped after a checkpoint
    resumes from it."""
    command = [sys.executable, "-m", "hf_vit_reduction", "train", "--strategy", strategy, "--seed", str(seed)]
    command += ["--output_dir", str(run_dir), "--report_to", "none"]
    if any((run_dir / "checkpoints").glob("step_*")):
        command += ["--resume_from_checkpoint", "latest"]
    return command + training_arguments


def check_output(output: Path, training_arguments: list[str]) -> None:
    """An output folder is new, empty, or a reproduction with the same training arguments (then it continues)."""
    if output.exists() and not output.is_dir():
        raise ValueError(f"--output_dir {str(output)!r} is a file, not a folder")
    if not output.is_dir() or not any(output.iterdir()):
        return
    settings = output / SETTINGS
    if not settings.is_file():
        raise ValueError(f"--output_dir {str(output)!r} is in use: it is not empty and holds no {SETTINGS}")
    try:
        previous = json.loads(settings.read_text(encoding="utf-8"))["training_arguments"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise ValueError(
            f"--output_dir {str(output)!r} holds a {SETTINGS} that is not ours; give another --output"
        ) from None
    if previous != training_arguments:
        raise ValueError(
            f"--output_dir {str(output)!r} holds a reproduction trained with {previous or 'no extra flags'}, not "
            f"{training_arguments or 'no extra flags'}; give another --output"
        )


def train(command: list[str], run_dir: Path, log: Path, progress: tqdm) -> int:
    """Run one training process, its output in `log`, showing its last evaluated epoch; its exit status."""
    shown = None
    with log.open("a", encoding="utf-8") as stream:
        stream.write(" ".join(command) + "\n")
        stream.flush()
        process = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT)
        try:
            while True:
                try:
                    return process.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    history = run_dir / "history.jsonl"
                    evaluated = len(history.read_text().splitlines()) if history.is_file() else 0
                    if evaluated != shown:  # redrawn only on news, so a log of the display stays short
                        progress.set_postfix_str(f"{run_dir.name}: epochs evaluated {evaluated}")
                        shown = evaluated
        except BaseException:  # Ctrl-C or a crash here: the run stops with its checkpoints, ready to resume
            process.terminate()
            process.wait()
            raise


def reproduce(output, strategies, seeds, training_arguments) -> dict:
    output = Path(output)
    check_output(output, training_arguments)
    runs, logs = output / "runs", output / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    runs.mkdir(exist_ok=True)
    write_atomic(output / SETTINGS, json.dumps({"training_arguments": training_arguments}, indent=2) + "\n")
    plan = [(strategy, seed) for seed in seeds for strategy in strategies]
    with tqdm(total=len(plan), desc="reproduction", unit="run") as progress:
        for strategy, seed in plan:
            run_dir = runs / run_name(strategy, seed)
            if is_finished(run_dir):
                progress.set_postfix_str(f"{run_dir.name}: finished earlier")
                progress.update(1)
                continue
            log = logs / f"{run_dir.name}.log"
            command = training_command(strategy, seed, run_dir, training_arguments)
            status = train(command, run_dir, log, progress)
            if status != 0:
                lines = [line for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
                raise RuntimeError(
                    f"run {run_dir.name} failed (exit status {status}): {lines[-1] if lines else 'no output'} "
                    f"(log: {log}); rerun the same command to continue"
                )
            progress.update(1)
    return report_runs([runs / run_name(strategy, seed) for strategy, seed in plan], output / "report")


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    split = argv.index("--") if "--" in argv else len(argv)
    ours, training_arguments = argv[:split], argv[split + 1 :]
    parser = command_parser("reproduce", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True, help="folder for runs, logs and report (continued if rerun)")
    parser.add_argument("--strategies", nargs="+", choices=REDUCTION_STRATEGIES, default=list(REDUCTION_STRATEGIES))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    args = parser.parse_args(ours)
    for flag in ("--strategy", "--seed", "--output_dir", "--output", "--report_to"):
        if any(argument == flag or argument.startswith(f"{flag}=") for argument in training_arguments):
            parser.error(f"{flag} after '--' is set by the reproduction itself; allowed: other training flags")
    if len(set(args.seeds)) != len(args.seeds) or len(set(args.strategies)) != len(args.strategies):
        parser.error(f"--strategies {args.strategies} / --seeds {args.seeds} repeat a value; give each once")
    try:
        report = reproduce(args.output_dir, args.strategies, args.seeds, training_arguments)
    except ValueError as error:
        parser.error(str(error))
    except RuntimeError as error:  # a training run failed
        raise SystemExit(f"error: {error}") from None
    print(results_section(report, image_prefix="report/"))
    print(f"wrote {Path(args.output_dir) / 'report' / 'report.md'}")
    return report
