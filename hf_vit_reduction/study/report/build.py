"""Every number of the report from the runs: means and stds over seeds, paired t-tests, curves, recoveries."""

import statistics

from scipy.stats import ttest_rel

from ...configuration_vit_reduced import REDUCTION_STRATEGIES
from .plots import PLOTS
from .runs import FIGURES, Run

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


def build_report(
    runs: list[Run], left_out: list[dict], benchmark: dict | None = None, *, evaluations: list[dict] = ()
) -> dict:
    """Every number of the report, JSON-serializable; `evaluations`: rows of `evaluate`'s results files."""
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
        "evaluations": list(evaluations),
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
