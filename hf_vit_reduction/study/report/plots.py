"""The report's plots: top-1 per epoch, and final top-1 against parameters and against GMACs."""

from pathlib import Path

from ...training.outputs import replace_atomically

PLOTS = {
    "curves": "top1_per_epoch.png",
    "parameters": "top1_vs_parameters.png",
    "gmacs": "top1_vs_gmacs.png",
}


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
