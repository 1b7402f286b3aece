"""From training runs to the paper's tables: Table 1 with paired t-tests, Table 2, plots, report.md and report.json.

    hf-vit-reduction report runs/baseline-seed0 runs/baseline-seed1 ... --output_dir report
    hf-vit-reduction report runs/ --output_dir report --benchmark_json benchmark.json

A folder that is not a run but holds runs (such as `runs/`) stands for the runs inside it. Strategy and seed come
from each run's `results.json`; runs that cannot be compared with the others (unfinished, corrupt, another dataset or
epoch count, a second run of the same strategy and seed) are named with the reason and left out.
"""

import argparse
import json
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from scipy.stats import ttest_rel

from ..cli import command_parser
from ..configuration_vit_reduced import REDUCTION_STRATEGIES, ViTReducedConfig
from ..hub.run_folder import CorruptRunFile, is_number, read_history, read_json
from ..summary import summarize
from ..training.outputs import replace_atomically, write_atomic

FIGURES = ("final_top1", "final_top5", "peak_top1", "peak_epoch", "delta_peak_final")
RESULT_KEYS = (*FIGURES, "strategy", "seed", "data")
RUN_FILES = ("results.json", "args.json", "history.jsonl")
PLOTS = {
    "curves": "top1_per_epoch.png",
    "parameters": "top1_vs_parameters.png",
    "gmacs": "top1_vs_gmacs.png",
}
REPORT_FILES = ("report.md", "report.json", *PLOTS.values())

# The paper gives "mean ± std over two seeds" without saying which std. Its Table 1 cannot tell: with two seeds
# the sample std is |a - b| / √2 and the population std |a - b| / 2, and its rounded entries fit either.
STD_NOTE = (
    "± is the sample standard deviation over seeds (ddof=1; with two seeds |a − b| / √2). The paper writes "
    "“mean ± std over two seeds” without saying which; its rounded figures fit either."
)
T_TEST_NOTE = (
    "p: two-sided paired t-test (`scipy.stats.ttest_rel`) of final top-1 against the baseline, paired by seed; "
    "n: the number of seed pairs."
)


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


def _spread(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "values": values,
    }


def paired_t_test(runs: list[Run], baseline: list[Run]) -> dict:
    """Final top-1 of `runs` against `baseline`, paired by seed (scipy.stats.ttest_rel, two-sided)."""
    by_seed = {run.seed: run.results["final_top1"] for run in baseline}
    seeds = sorted(run.seed for run in runs if run.seed in by_seed)
    ours = {run.seed: run.results["final_top1"] for run in runs}
    test = {"pairs": len(seeds), "seeds": seeds, "statistic": None, "p_value": None, "note": None}
    if not baseline:
        test["note"] = "no baseline runs"
        return test
    if len(seeds) < 2:
        test["note"] = f"needs at least 2 seeds shared with the baseline; has {len(seeds)}"
        return test
    differences = [ours[seed] - by_seed[seed] for seed in seeds]
    test["mean_difference"] = statistics.fmean(differences)
    if len(set(differences)) == 1:  # zero variance: t is 0/0 or ±inf, which is no evidence either way
        test["note"] = "undefined: the difference to the baseline is the same for every seed"
        return test
    result = ttest_rel([ours[seed] for seed in seeds], [by_seed[seed] for seed in seeds])
    test["statistic"], test["p_value"] = float(result.statistic), float(result.pvalue)
    return test


def benchmark_throughput(benchmark: dict) -> dict:
    """{strategy: row} from `hf-vit-reduction benchmark --output_json`, compiled rows where measured."""
    rows = benchmark.get("rows") if isinstance(benchmark, dict) else None
    if not rows or not isinstance(rows, list):
        raise ValueError("benchmark JSON has no 'rows' list (write it with hf-vit-reduction benchmark)")
    chosen = {}
    for row in rows:
        if row.get("model") in REDUCTION_STRATEGIES and (row["model"] not in chosen or row.get("mode") == "compiled"):
            chosen[row["model"]] = row
    return chosen


def strategy_order(strategies) -> list[str]:
    known = [s for s in REDUCTION_STRATEGIES if s in strategies]
    return known + sorted(set(strategies) - set(known))


def build_report(runs: list[Run], left_out: list[dict], benchmark: dict | None = None) -> dict:
    """Every number of the report, JSON-serializable."""
    recoveries = [run for run in runs if run.results.get("provenance")]
    runs = [run for run in runs if not run.results.get("provenance")]
    groups = {s: [run for run in runs if run.strategy == s] for s in strategy_order({r.strategy for r in runs})}
    for group in groups.values():
        group.sort(key=lambda run: run.seed)
    benchmark_rows = benchmark_throughput(benchmark) if benchmark is not None else None
    strategies = {}
    for strategy, group in groups.items():
        entry = {
            "seeds": [run.seed for run in group],
            "runs": [str(run.path) for run in group],
            "summary": group[0].summary,
        }
        for name, key in (
            ("top1", "final_top1"),
            ("top5", "final_top5"),
            ("peak_top1", "peak_top1"),
            ("peak_epoch", "peak_epoch"),
            ("delta_peak_final", "delta_peak_final"),
            ("train_images_per_s", "train_images_per_s"),
        ):
            values = [run.results.get(key) for run in group]
            entry[name] = _spread(values) if None not in values else None
        if strategy != "baseline":
            entry["t_test"] = paired_t_test(group, groups.get("baseline", []))
        if benchmark_rows is not None:
            row = benchmark_rows.get(strategy)
            entry["benchmark"] = (
                {k: row.get(k) for k in ("mode", "inference_images_per_s", "training_images_per_s")} if row else None
            )
        entry["curve"] = mean_curve(group)
        strategies[strategy] = entry
    first = runs[0].results if runs else {}
    if benchmark is not None:
        machine = benchmark.get("machine", {})
        throughput = {
            "source": "benchmark",
            "device": machine.get("device"),
            "settings": benchmark.get("settings"),
        }
    else:
        throughput = {"source": "runs"}
    return {
        "data": first.get("data"),
        "epochs": first.get("epochs"),
        "std": STD_NOTE,
        "t_test": T_TEST_NOTE,
        "throughput": throughput,
        "strategies": strategies,
        "runs": [
            {"run": str(run.path), "strategy": run.strategy, "seed": run.seed}
            | {key: run.results.get(key) for key in (*FIGURES, "train_images_per_s", "epochs", "steps")}
            for run in runs
        ],
        "left_out": left_out,
        "plots": dict(PLOTS),
        "recovery": [recovery_row(run, groups.get(run.strategy, [])) for run in recoveries],
    }


def recovery_row(run: Run, scratch: list[Run]) -> dict:
    """A recovery run's figures beside the from-scratch runs of its strategy (their mean top-1 and wall time)."""
    provenance, cut = run.results["provenance"], run.results["provenance"].get("cut") or {}
    distillation = provenance.get("distillation") or {}
    scratch_top1 = [r.results["final_top1"] for r in scratch]
    scratch_wall = [r.results["wall_time_s"] for r in scratch if "wall_time_s" in r.results]
    return {
        "run": str(run.path),
        "strategy": run.strategy,
        "seed": run.seed,
        "cut": cut.get("prune_method") if run.strategy == "shallow" else cut.get("share_method"),
        "distillation": distillation.get("distillation", "none"),
        "epochs": provenance.get("recovery_epochs"),
        "top1_before": provenance.get("top1_before"),
        "top1_after": run.results["final_top1"],
        "wall_time_s": run.results.get("wall_time_s"),
        "scratch_top1": statistics.mean(scratch_top1) if scratch_top1 else None,
        "scratch_wall_time_s": statistics.mean(scratch_wall) if scratch_wall else None,
    }


def mean_curve(group: list[Run]) -> dict:
    """Reported top-1 per epoch: mean, lowest and highest over the seeds, on the epochs every seed evaluated."""
    per_run = [{row["epoch"]: row["top1"] for row in run.history} for run in group]
    epochs = sorted(set.intersection(*(set(curve) for curve in per_run)))
    values = [[curve[epoch] for curve in per_run] for epoch in epochs]
    mean = [statistics.fmean(v) for v in values]
    peak = max(range(len(mean)), key=lambda i: (mean[i], -i)) if mean else None  # the first epoch at the maximum
    return {
        "epochs": epochs,
        "mean": mean,
        "low": [min(v) for v in values],
        "high": [max(v) for v in values],
        "peak_epoch": epochs[peak] if peak is not None else None,
        "peak_top1": mean[peak] if peak is not None else None,
    }


def _pm(spread: dict | None, digits: int = 2) -> str:
    if spread is None:
        return "–"
    if spread["std"] is None:
        return f"{spread['mean']:.{digits}f}"
    return f"{spread['mean']:.{digits}f}±{spread['std']:.{digits}f}"


def _parameters(count: int) -> str:
    return f"{count / 1e6:.1f}M" if count >= 1e6 else f"{count:,}"


def _rate(value) -> str:
    return "–" if value is None else f"{value:,.0f}"


def _p_value(test: dict | None) -> str:
    if test is None:
        return "(reference)"
    if test["p_value"] is None:
        return f"– (n={test['pairs']}: {test['note']})"
    return f"{test['p_value']:.3g} (n={test['pairs']})"


def results_section(report: dict, image_prefix: str = "", heading: str = "###") -> str:
    """The results as markdown (tables, notes, plots) for a README or a model card; images under `image_prefix`."""
    strategies = report["strategies"]
    benchmark = report["throughput"]["source"] == "benchmark"
    if benchmark:
        throughput_header = "inference img/s | training img/s"
        alignment = "---:|---:"
    else:
        throughput_header = "training img/s (runs)"
        alignment = "---:"
    lines = [
        f"{heading} Table 1: accuracy and stability",
        "",
        (
            f"{report['data']}, {report['epochs']} epoch{'' if report['epochs'] == 1 else 's'}; top-1, top-5 and Δ(P→F) in percent (the reported "
            "model: EMA when on); peak epoch counted from 0 as in the history."
        ),
        "",
        f"| strategy | seeds | parameters | top-1 | top-5 | peak epoch | Δ(P→F) | {throughput_header} | p vs baseline |",
        f"|---|---|---:|---:|---:|---:|---:|{alignment}|---|",
    ]
    for strategy, entry in strategies.items():
        if benchmark:
            row = entry.get("benchmark") or {}
            throughput = f"{_rate(row.get('inference_images_per_s'))} | {_rate(row.get('training_images_per_s'))}"
        else:
            throughput = _pm(entry["train_images_per_s"], 0)
        lines.append(
            f"| {strategy} | {', '.join(str(s) for s in entry['seeds'])} | "
            f"{_parameters(entry['summary']['num_parameters'])} | {_pm(entry['top1'])} | {_pm(entry['top5'])} | "
            f"{_pm(entry['peak_epoch'], 1)} | {_pm(entry['delta_peak_final'])} | {throughput} | "
            f"{_p_value(entry.get('t_test'))} |"
        )
    lines += ["", STD_NOTE + " " + T_TEST_NOTE]
    if benchmark:
        source = report["throughput"]
        settings = source.get("settings") or {}
        lines.append(
            f"Throughput: `hf-vit-reduction benchmark` on {source.get('device')} "
            f"({settings.get('dtype', '?')}, batch {settings.get('batch_size', '?')} inference / "
            f"{settings.get('train_batch_size', '?')} training; compiled where measured)."
        )
    else:
        lines.append(
            "Throughput: the runs' own training images/s (images seen / wall time of the whole run, evaluation and "
            "start-up included), mean±std over seeds; not the paper's inference throughput."
        )
    if report.get("recovery"):
        lines += [
            "",
            f"{heading} Recovery of cut models",
            "",
            (
                "| run | strategy | cut | distillation | epochs | top-1 before | top-1 after | wall time | "
                "from scratch: top-1 | from scratch: wall time |"
            ),
            "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for row in report["recovery"]:
            cells = [_number(row[key], suffix) for key, suffix in RECOVERY_NUMBERS]
            lines.append(
                f"| `{Path(row['run']).name}` | {row['strategy']} | {row['cut'] or '?'} | {row['distillation']} | "
                + " | ".join(cells)
                + " |"
            )
    if report["left_out"]:
        lines += ["", "Left out:"] + [f"- `{item['run']}`: {item['reason']}" for item in report["left_out"]]
    lines += [
        "",
        f"{heading} Table 2: parameters and compute",
        "",
        "| strategy | parameters | MLP parameters | unique MLPs | GMACs | expansion ratio |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for strategy, entry in strategies.items():
        s = entry["summary"]
        lines.append(
            f"| {strategy} | {s['num_parameters']:,} | {s['mlp_parameters']:,} | {s['unique_mlps']} | "
            f"{s['gmacs']:.4g} | {s['expansion_ratio']:.2f}× |"
        )
    lines += [
        "",
        "GMACs in the paper's convention (`hf_vit_reduction.summary`), per image, from each run's saved config.",
        "",
        f"{heading} Plots",
        "",
        f"![validation top-1 per epoch]({image_prefix}{PLOTS['curves']})",
        "",
        (
            "Validation top-1 per epoch: the mean over seeds, the band from the lowest to the highest seed, the "
            "mean's peak marked."
        ),
        "",
        (
            f"![top-1 against parameters]({image_prefix}{PLOTS['parameters']}) "
            f"![top-1 against GMACs]({image_prefix}{PLOTS['gmacs']})"
        ),
        "",
    ]
    return "\n".join(lines)


RECOVERY_NUMBERS = (
    ("epochs", ""),
    ("top1_before", "%"),
    ("top1_after", "%"),
    ("wall_time_s", " s"),
    ("scratch_top1", "%"),
    ("scratch_wall_time_s", " s"),
)


def _number(value, suffix: str) -> str:
    if value is None:
        return "—"
    if suffix == "%":
        return f"{value:.2f}%"
    return f"{value:.0f}{suffix}"


def plot(report: dict, output_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    strategies = report["strategies"]
    colors = dict(zip(strategies, plt.get_cmap("tab10").colors))

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for strategy, entry in strategies.items():
        curve = entry["curve"]
        axes.plot(
            curve["epochs"],
            curve["mean"],
            color=colors[strategy],
            label=f"{strategy} (seeds {', '.join(map(str, entry['seeds']))})",
        )
        axes.fill_between(curve["epochs"], curve["low"], curve["high"], color=colors[strategy], alpha=0.2)
        if curve["peak_epoch"] is not None:
            axes.plot(curve["peak_epoch"], curve["peak_top1"], marker="*", markersize=12, color=colors[strategy])
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("epoch")
    axes.set_ylabel("validation top-1 (%)")
    axes.set_title("Validation top-1: mean over seeds, band from lowest to highest seed, ★ peak", fontsize=10)
    axes.legend()
    axes.grid(alpha=0.3)
    _save(figure, output_dir / PLOTS["curves"])

    for key, label, scale in (
        ("parameters", "parameters (millions)", lambda s: s["num_parameters"] / 1e6),
        ("gmacs", "GMACs per image (paper's convention)", lambda s: s["gmacs"]),
    ):
        figure, axes = plt.subplots(figsize=(5.5, 4))
        for strategy, entry in strategies.items():
            top1 = entry["top1"]
            axes.errorbar(
                scale(entry["summary"]),
                top1["mean"],
                yerr=top1["std"] or 0.0,
                fmt="o",
                capsize=4,
                color=colors[strategy],
                label=strategy,
            )
        axes.set_xlabel(label)
        axes.set_ylabel("final top-1 (%), mean ± std over seeds")
        axes.set_title(f"Top-1 against {key}")
        axes.legend()
        axes.grid(alpha=0.3)
        _save(figure, output_dir / PLOTS[key])


def _save(figure, path: Path) -> None:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    replace_atomically(path, lambda temporary: figure.savefig(temporary, dpi=100, format="png"))
    plt.close(figure)


def check_output_dir(output_dir: Path) -> None:
    """Refuse a folder that holds anything but a previous report: it belongs to something else."""
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"--output {str(output_dir)!r} is a file, not a folder")
    if not output_dir.is_dir():
        return
    others = sorted(p.name for p in output_dir.iterdir() if p.name not in REPORT_FILES and not p.name.startswith("."))
    if others:
        raise ValueError(
            f"--output {str(output_dir)!r} is in use: it holds {', '.join(others[:5])}"
            f"{' ...' if len(others) > 5 else ''}; give an empty folder, a new one, or a previous report's"
        )
    if any(output_dir.iterdir()) and not (output_dir / "report.json").is_file():
        raise ValueError(f"--output {str(output_dir)!r} holds report files but no report.json: not a report of ours")


def write_report(report: dict, output_dir) -> Path:
    """report.md, report.json and the plots in `output_dir`; returns report.md's path."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    plot(report, output_dir)
    write_atomic(output_dir / "report.json", json.dumps(report, indent=2, allow_nan=False) + "\n")
    markdown = "## Results\n\n" + results_section(report)
    write_atomic(output_dir / "report.md", markdown)
    return output_dir / "report.md"


def _load_benchmark(path: str) -> dict:
    try:
        benchmark = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"--benchmark_json {path!r} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"--benchmark_json {path!r} is not JSON ({error})") from None
    try:
        benchmark_throughput(benchmark)
    except ValueError as error:
        raise ValueError(f"--benchmark_json {path!r}: {error}") from None
    return benchmark


def report_runs(run_dirs, output_dir, benchmark_json: str | None = None) -> dict:
    """Check every input, then read the runs and write the report; a ValueError names the bad input."""
    output_dir = Path(output_dir)
    check_output_dir(output_dir)
    benchmark = _load_benchmark(benchmark_json) if benchmark_json else None
    runs, left_out = collect_runs(run_dirs)
    if not runs:
        reasons = "; ".join(f"{item['run']}: {item['reason']}" for item in left_out)
        raise ValueError(f"none of the {len(left_out)} runs can be reported ({reasons})")
    report = build_report(runs, left_out, benchmark)
    write_report(report, output_dir)
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = command_parser("report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", help="run folders (output_dir of run_image_classification.py)")
    parser.add_argument("--output_dir", required=True, help="report folder: new, empty, or a previous report's")
    parser.add_argument("--benchmark_json", help="throughput from `hf-vit-reduction benchmark`")
    args = parser.parse_args(argv)
    try:
        report = report_runs(args.runs, args.output_dir, args.benchmark_json)
    except ValueError as error:
        parser.error(str(error))
    print(results_section(report))
    print(f"wrote {Path(args.output_dir) / 'report.md'}, report.json and {len(PLOTS)} plots")
    return report
