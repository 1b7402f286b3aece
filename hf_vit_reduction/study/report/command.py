"""From training runs to the paper's tables: Table 1 with paired t-tests, Table 2, plots, report.md and report.json.

    hf-vit-reduction report runs/baseline-seed0 runs/baseline-seed1 ... --output_dir report
    hf-vit-reduction report runs/ --output_dir report --benchmark_json benchmark.json

    hf-vit-reduction report runs/ scores.json --output_dir report

A folder that is not a run but holds runs (such as `runs/`) stands for the runs inside it; the results files of
`hf-vit-reduction evaluate` (--results_file) add a table of the models they scored. Strategy and seed come
from each run's `results.json`; runs that cannot be compared with the others (unfinished, corrupt, another dataset or
epoch count, a second run of the same strategy and seed) are named with the reason and left out.
"""

import argparse
import json
from pathlib import Path

from ...cli import command_parser
from ...training.outputs import write_atomic
from .build import benchmark_throughput, build_report
from .evaluations import is_evaluation_file, read_evaluation
from .markdown import results_section
from .plots import PLOTS, plot
from .runs import collect_runs

REPORT_FILES = ("report.md", "report.json", *PLOTS.values())


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
    if report["strategies"]:
        plot(report, output_dir)
    else:  # evaluations alone have no plots; a previous report's would describe other runs
        for name in PLOTS.values():
            (output_dir / name).unlink(missing_ok=True)
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
    """Check every input, then read the runs and evaluations and write the report; a ValueError names the bad input.

    `run_dirs` may also name `evaluate`'s results files, whose rows are tabled beside the runs, or alone.
    """
    output_dir = Path(output_dir)
    check_output_dir(output_dir)
    benchmark = _load_benchmark(benchmark_json) if benchmark_json else None
    files = [path for path in run_dirs if is_evaluation_file(path)]
    evaluations = [row for path in dict.fromkeys(files) for row in read_evaluation(path)]
    folders = [path for path in run_dirs if path not in files]
    runs, left_out = collect_runs(folders) if folders or not evaluations else ([], [])
    if not runs and not evaluations:
        reasons = "; ".join(f"{item['run']}: {item['reason']}" for item in left_out)
        raise ValueError(f"none of the {len(left_out)} runs can be reported ({reasons})")
    report = build_report(runs, left_out, benchmark, evaluations=evaluations)
    write_report(report, output_dir)
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = command_parser("report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "runs", nargs="*", help="run folders (a training run's output_dir), and evaluate's results files (.json, .csv)"
    )
    parser.add_argument("--output_dir", required=True, help="report folder: new, empty, or a previous report's")
    parser.add_argument("--benchmark_json", help="throughput from `hf-vit-reduction benchmark`")
    args = parser.parse_args(argv)
    try:
        report = report_runs(args.runs, args.output_dir, args.benchmark_json)
    except ValueError as error:
        parser.error(str(error))
    print(results_section(report))
    plots = f" and {len(PLOTS)} plots" if report["strategies"] else ""
    print(f"wrote {Path(args.output_dir) / 'report.md'}, report.json{plots}")
    return report
