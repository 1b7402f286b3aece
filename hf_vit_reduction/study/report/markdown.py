"""The report as markdown: Table 1, the recoveries, Table 2 and the plots, for report.md, a README or a card."""

from pathlib import Path

from .build import STD_NOTE, T_TEST_NOTE
from .plots import PLOTS

RECOVERY_NUMBERS = (
    ("epochs", ""),
    ("top1_before", "%"),
    ("top1_after", "%"),
    ("wall_time_s", " s"),
    ("scratch_top1", "%"),
    ("scratch_wall_time_s", " s"),
)


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
    sections = [runs_section(report, image_prefix, heading)] if report["strategies"] else []
    if report.get("evaluations"):
        sections.append(evaluations_section(report["evaluations"], heading))
    return "\n".join(sections)


def runs_section(report: dict, image_prefix: str, heading: str) -> str:
    """Table 1, the recoveries, Table 2 and the plots of the training runs."""
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


def _number(value, suffix: str) -> str:
    if value is None:
        return "—"
    if suffix == "%":
        return f"{value:.2f}%"
    return f"{value:.0f}{suffix}"


def evaluations_section(rows: list[dict], heading: str) -> str:
    """`evaluate`'s rows: the scores, and the paper's Table 2 columns where the model is a ViTReduced."""
    lines = [
        f"{heading} Evaluated models",
        "",
        (
            "| model | kind | data | top-1 | top-5 | agreement | parameters | MLP parameters | unique MLPs | GMACs | "
            "expansion ratio | images/s |"
        ),
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        mlp, unique, ratio = (row.get(key) for key in ("mlp_parameters", "unique_mlps", "expansion_ratio"))
        gmacs = row.get("gmacs")
        lines.append(
            f"| `{row['model']}` | {row.get('kind') or '?'} | {row.get('data') or '?'} | {row['top1']:.2f} | "
            f"{row['top5']:.2f} | {row['agreement']:.2f} | {_count(row.get('parameters'))} | {_count(mlp)} | "
            f"{'–' if unique is None else unique} | "
            f"{'–' if gmacs is None else f'{gmacs:.4g}'}{'' if row.get('gmacs_convention') == 'paper' else '*'} | "
            f"{'–' if ratio is None else f'{ratio:.2f}×'} | {_rate(row.get('images_per_s'))} |"
        )
    settings = dict.fromkeys(
        f"`{row['results_file']}`: {row.get('device')}, {row.get('dtype')}, batch {row.get('batch_size')}"
        for row in rows
    )
    lines += [
        "",
        (
            "Top-1, top-5 and agreement (the share of images whose top-1 equals the first model's of the same "
            "`hf-vit-reduction evaluate` run) in percent. GMACs per image in the paper's convention "
            "(`hf_vit_reduction.summary`); * counted by `torch.utils.flop_counter` (FLOPs / 2) for models other "
            "than ViTReduced, whose MLP columns are left empty. Images/s end to end, decoding included: "
            + "; ".join(settings)
            + "."
        ),
        "",
    ]
    return "\n".join(lines)


def _count(value) -> str:
    return "–" if value is None else f"{value:,}"
