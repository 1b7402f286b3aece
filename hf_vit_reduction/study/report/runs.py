"""Finding and reading training runs: a run folder's results, history and saved config, or why it is left out."""

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ...configuration_vit_reduced import ViTReducedConfig
from ...hub.run_folder import CorruptRunFile, is_number, read_history, read_json
from ...summary import summarize

FIGURES = ("final_top1", "final_top5", "peak_top1", "peak_epoch", "delta_peak_final")
RESULT_KEYS = (*FIGURES, "strategy", "seed", "data")
RUN_FILES = ("results.json", "args.json", "history.jsonl")


class RunProblem(Exception):
    """Why a folder's run is left out of the report."""


@dataclass
class Run:
    path: Path
    results: dict
    history: list[dict]
    summary: dict  # hf_vit_reduction.summary of the saved model's config

    @property
    def strategy(self) -> str:
        return self.results["strategy"]

    @property
    def seed(self) -> int:
        return self.results["seed"]


def _newest_checkpoint_step(path: Path) -> int | None:
    steps = [int(p.name[5:]) for p in (path / "checkpoints").glob("step_*") if p.name[5:].isdigit()]
    return max(steps, default=None)


def is_run_folder(path: Path) -> bool:
    return any((path / name).exists() for name in RUN_FILES) or (path / "checkpoints").is_dir()


def load_run(path) -> Run:
    """Read a finished run, or raise RunProblem saying why it cannot be reported."""
    try:
        return _load_run(Path(path))
    except CorruptRunFile as error:
        raise RunProblem(str(error)) from None


def _load_run(path: Path) -> Run:
    results_path = path / "results.json"
    if not results_path.is_file():
        rows = read_history(path / "history.jsonl")
        progress = f", last evaluated epoch {rows[-1].get('epoch')}" if rows else ""
        raise RunProblem(f"in progress or stopped: no results.json yet{progress}")
    results = read_json(results_path)
    missing = [key for key in RESULT_KEYS if key not in results]
    if missing:
        raise RunProblem(f"results.json lacks {', '.join(missing)}")
    for key in (*FIGURES, "seed"):
        if not is_number(results[key]) or (key == "seed" and not isinstance(results[key], int)):
            raise RunProblem(
                f"results.json: {key}={results[key]!r} is not a {'whole ' if key == 'seed' else ''}number"
            )
    # A new run started in a finished run's folder: its checkpoints, history or arguments no longer match.
    newest = _newest_checkpoint_step(path)
    if newest is not None and "steps" in results and newest > results["steps"]:
        raise RunProblem(f"in progress: checkpoint step {newest} is past the results' last step {results['steps']}")
    if not (path / "history.jsonl").is_file():
        raise RunProblem("no history.jsonl")
    history = read_history(path / "history.jsonl")
    if not history or history[-1].get("top1") != results["final_top1"]:
        raise RunProblem("in progress: history.jsonl no longer ends with the final top-1 of results.json")
    if (path / "args.json").is_file() and "config" in results:
        arguments = read_json(path / "args.json")
        if arguments != results["config"]:
            raise RunProblem("in progress: args.json differs from the arguments recorded in results.json")
    if not (path / "config.json").is_file():
        raise RunProblem("no config.json (the final model is not saved at the top of the run folder)")
    try:
        config = ViTReducedConfig.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise RunProblem(f"unreadable config.json ({error})") from None
    return Run(path, results, history, summarize(config))


def find_runs(paths) -> list[Path]:
    """The run folders named, with a folder of runs standing for the runs inside it; errors name the path."""
    found = []
    for name in dict.fromkeys(paths):
        path = Path(name)
        if not path.exists():
            raise ValueError(f"run folder {name!r} does not exist")
        if not path.is_dir():
            raise ValueError(f"run folder {name!r} is not a folder")
        if is_run_folder(path):
            found.append(path)
            continue
        inside = sorted(child for child in path.iterdir() if child.is_dir() and is_run_folder(child))
        if not inside:
            raise ValueError(
                f"{name!r} is not a run folder (none of {', '.join(RUN_FILES)}, checkpoints/) and holds no run folders"
            )
        found.extend(inside)
    found = list(dict.fromkeys(found))  # a run named twice (itself and through its parent folder) counts once
    if not found:
        raise ValueError("no run folders given; pass one or more run folders (or a folder holding them)")
    return found


def collect_runs(paths) -> tuple[list[Run], list[dict]]:
    """(comparable runs, [{"run": path, "reason": why}, ...] for the runs left out)."""
    runs, left_out = [], []
    for path in find_runs(paths):
        try:
            runs.append(load_run(path))
        except RunProblem as problem:
            left_out.append({"run": str(path), "reason": str(problem)})
    if not runs:
        return runs, left_out
    # The majority's dataset and length set the comparison; ties go to the first run given.
    # Recoveries of cut models are shorter by design: they do not vote.
    voters = [run for run in runs if not run.results.get("provenance")] or runs
    data = Counter(run.results["data"] for run in voters).most_common(1)[0][0]
    epochs = Counter(run.results.get("epochs") for run in voters if run.results["data"] == data).most_common(1)[0][0]
    kept, seen, architecture = [], {}, {}
    for run in runs:
        if run.results.get("provenance"):  # a recovery of a cut model: its own table, beside the from-scratch runs
            kept.append(run)
            continue
        key = (run.strategy, run.seed)
        shape = {k: run.summary[k] for k in ("num_parameters", "mlp_hidden_size", "unique_mlps", "gmacs")}
        if run.results["data"] != data:
            reason = f"trained on {run.results['data']!r}; the other runs on {data!r}"
        elif run.results.get("epochs") != epochs:
            reason = f"{run.results.get('epochs')} epochs; the other runs {epochs}"
        elif key in seen:
            reason = f"a second run of {run.strategy} seed {run.seed} (the first: {seen[key]})"
        elif architecture.setdefault(run.strategy, shape) != shape:
            reason = f"another {run.strategy} architecture than the first {run.strategy} run's ({shape})"
        else:
            seen[key] = str(run.path)
            kept.append(run)
            continue
        left_out.append({"run": str(run.path), "reason": reason})
    return kept, left_out
