import json
import shutil

import pytest
from scipy.stats import ttest_rel

from hf_vit_reduction import ViTReducedConfig, summarize
from hf_vit_reduction.study.report import PLOTS, build_report, collect_runs, main, report_runs, results_section

DIGITS = "digits (scikit-learn, embedded)"

# Reported top-1 per epoch of each synthetic run; top-5 is top-1 + 5.
CURVES = {
    ("baseline", 0): [50.0, 80.0, 91.0, 88.0],
    ("baseline", 1): [40.0, 85.0, 89.0, 87.0],
    ("baseline", 2): [45.0, 90.0, 89.5, 89.0],
    ("grouped", 0): [55.0, 82.0, 90.0, 90.0],
    ("grouped", 1): [50.0, 86.0, 89.0, 89.5],
    ("grouped", 2): [60.0, 88.0, 92.0, 91.0],
    ("shallow", 0): [52.0, 84.0, 89.0, 89.0],
    ("shallow", 1): [48.0, 83.0, 90.0, 90.0],
    ("thin", 0): [51.0, 81.0, 88.0, 87.5],
}


def make_run(folder, strategy, seed, curve, data=DIGITS, images_per_s=100.0, **results_overrides):
    """A finished run's folder as run_image_classification.py leaves it (results, history, args, config)."""
    folder.mkdir(parents=True)
    config = ViTReducedConfig.from_preset("digits", reduction_strategy=strategy, num_labels=10)
    config.save_pretrained(folder)
    rows = [
        {"epoch": epoch, "step": 10 * (epoch + 1), "top1": top1, "top5": top1 + 5, "loss": 1.0}
        for epoch, top1 in enumerate(curve)
    ]
    peak = max(rows, key=lambda row: (row["top1"], -row["epoch"]))
    arguments = {"strategy": strategy, "seed": seed, "output_dir": str(folder)}
    summary = summarize(config)
    results = {
        "final_top1": rows[-1]["top1"],
        "final_top5": rows[-1]["top5"],
        "peak_top1": peak["top1"],
        "peak_top5": peak["top5"],
        "peak_epoch": peak["epoch"],
        "delta_peak_final": peak["top1"] - rows[-1]["top1"],
        "strategy": strategy,
        "seed": seed,
        "parameters": summary["num_parameters"],
        "mlp_parameters": summary["mlp_parameters"],
        "gmacs": summary["gmacs"],
        "epochs": len(curve),
        "steps": rows[-1]["step"],
        "train_images_per_s": images_per_s,
        "data": data,
        "config": arguments,
    } | results_overrides
    (folder / "history.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (folder / "args.json").write_text(json.dumps(arguments))
    (folder / "results.json").write_text(json.dumps(results))
    return folder


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for (strategy, seed), curve in CURVES.items():
        make_run(root / f"{strategy}-seed{seed}", strategy, seed, curve, images_per_s=100.0 + 10 * seed)
    return root


@pytest.fixture(scope="module")
def report(runs_dir, tmp_path_factory):
    output = tmp_path_factory.mktemp("report")
    return output, report_runs([runs_dir], output)


def final(strategy):
    return [curve[-1] for (s, _), curve in CURVES.items() if s == strategy]


def test_table_1_means_stds_peaks_and_deltas(report):
    _, result = report
    baseline = result["strategies"]["baseline"]
    assert baseline["seeds"] == [0, 1, 2]
    assert baseline["top1"]["values"] == [88.0, 87.0, 89.0]
    assert baseline["top1"]["mean"] == pytest.approx(88.0)
    assert baseline["top1"]["std"] == pytest.approx(1.0)  # sample std (ddof=1) of 88, 87, 89
    assert baseline["top5"]["mean"] == pytest.approx(93.0)
    assert baseline["peak_epoch"]["values"] == [2, 2, 1]
    assert baseline["peak_epoch"]["mean"] == pytest.approx(5 / 3)
    assert baseline["delta_peak_final"]["values"] == [3.0, 2.0, 1.0]
    assert baseline["delta_peak_final"]["std"] == pytest.approx(1.0)
    shallow = result["strategies"]["shallow"]
    assert shallow["top1"]["mean"] == pytest.approx(89.5)
    assert shallow["top1"]["std"] == pytest.approx(0.5 * 2**0.5)  # two seeds: |a - b| / sqrt(2)
    assert shallow["delta_peak_final"]["values"] == [0.0, 0.0]
    assert shallow["peak_epoch"]["values"] == [2, 2]
    grouped = result["strategies"]["grouped"]
    assert grouped["peak_epoch"]["values"] == [2, 3, 2]  # seed 1 peaks at its last epoch
    assert grouped["delta_peak_final"]["mean"] == pytest.approx(1 / 3)
    thin = result["strategies"]["thin"]
    assert thin["top1"] == {"mean": 87.5, "std": None, "values": [87.5]}
    assert baseline["train_images_per_s"]["mean"] == pytest.approx(110.0)
    assert list(result["strategies"]) == ["baseline", "grouped", "shallow", "thin"]
    assert result["data"] == DIGITS and result["epochs"] == 4 and result["left_out"] == []


def test_paired_t_tests_equal_scipy_on_the_same_arrays(report):
    _, result = report
    grouped = result["strategies"]["grouped"]["t_test"]
    expected = ttest_rel(final("grouped"), final("baseline"))
    assert grouped["pairs"] == 3 and grouped["seeds"] == [0, 1, 2]
    assert grouped["p_value"] == pytest.approx(expected.pvalue, rel=1e-12)
    assert grouped["statistic"] == pytest.approx(expected.statistic, rel=1e-12)
    shallow = result["strategies"]["shallow"]["t_test"]  # paired on seeds 0 and 1 only
    expected = ttest_rel(final("shallow"), final("baseline")[:2])
    assert shallow["pairs"] == 2 and shallow["p_value"] == pytest.approx(expected.pvalue, rel=1e-12)
    thin = result["strategies"]["thin"]["t_test"]
    assert thin["pairs"] == 1 and thin["p_value"] is None and "at least 2" in thin["note"]
    assert "t_test" not in result["strategies"]["baseline"]


def test_table_2_from_each_runs_saved_config(report):
    _, result = report
    for strategy in ("baseline", "grouped", "shallow", "thin"):
        config = ViTReducedConfig.from_preset("digits", reduction_strategy=strategy, num_labels=10)
        assert result["strategies"][strategy]["summary"] == summarize(config)
    assert result["strategies"]["grouped"]["summary"]["unique_mlps"] == 2
    assert result["strategies"]["shallow"]["summary"]["expansion_ratio"] == 2.0


def test_markdown_tables_and_plots(report):
    output, result = report
    markdown = (output / "report.md").read_text()
    assert (
        "| baseline | 0, 1, 2 | 208,074 | 88.00±1.00 | 93.00±1.00 | 1.7±0.6 | 2.00±1.00 | 110±10 | (reference) |"
        in (markdown)
    )
    p_shallow = result["strategies"]["shallow"]["t_test"]["p_value"]
    assert (
        f"| shallow | 0, 1 | 142,026 | 89.50±0.71 | 94.50±0.71 | 2.0±0.0 | 0.00±0.00 | 105±7 | {p_shallow:.3g} (n=2) |"
        in (markdown)
    )
    assert "– (n=1: needs at least 2 seeds shared with the baseline; has 1)" in markdown
    assert "| grouped | 141,898 | 66,176 | 2 |" in markdown
    assert "ddof=1" in markdown and "training images/s" in markdown
    for name in PLOTS.values():
        assert f"]({name})" in markdown
        assert f"](model/{name})" in results_section(result, image_prefix="model/")
    assert json.loads((output / "report.json").read_text()) == result


def test_plots_are_valid_non_trivial_pngs(report):
    import matplotlib.image

    output, _ = report
    for name in PLOTS.values():
        data = (output / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
        pixels = matplotlib.image.imread(output / name)
        assert pixels.shape[0] >= 300 and pixels.shape[1] >= 400
        assert pixels.std() > 0.05  # not a blank canvas


def test_runs_that_cannot_be_compared_are_named_with_their_reason(runs_dir, tmp_path):
    odd = tmp_path / "odd"
    make_run(odd / "cifar", "shallow", 5, [10.0, 20.0, 30.0, 40.0], data="cifar10")
    make_run(odd / "short", "shallow", 6, [10.0, 20.0])
    make_run(odd / "twice", "baseline", 0, [1.0, 2.0, 3.0, 4.0])
    make_run(odd / "later", "shallow", 7, [10.0, 20.0, 30.0, 40.0])
    (odd / "later" / "checkpoints" / "step_00000080").mkdir(parents=True)
    make_run(odd / "corrupt", "thin", 1, [10.0, 20.0, 30.0, 40.0])
    (odd / "corrupt" / "results.json").write_text('{"final_top1": 9')
    make_run(odd / "keys", "thin", 2, [10.0, 20.0, 30.0, 40.0])
    (odd / "keys" / "results.json").write_text(json.dumps({"final_top1": 40.0}))
    make_run(odd / "types", "thin", 4, [10.0, 20.0, 30.0, 40.0], final_top5="95%")
    make_run(odd / "rows", "thin", 5, [10.0, 20.0, 30.0, 40.0])
    (odd / "rows" / "history.jsonl").write_text(json.dumps({"epoch": 0, "accuracy": 5.0}) + "\n")
    running = odd / "running"
    running.mkdir()
    (running / "args.json").write_text("{}")
    (running / "history.jsonl").write_text(json.dumps({"epoch": 0, "top1": 5.0}) + "\n")
    make_run(odd / "restarted", "thin", 3, [10.0, 20.0, 30.0, 40.0])
    (odd / "restarted" / "args.json").write_text(json.dumps({"strategy": "thin", "seed": 3, "epochs": 9}))
    runs, left_out = collect_runs([runs_dir, odd, runs_dir / "thin-seed0"])  # thin-seed0 named twice: once
    assert len(runs) == len(CURVES)
    reasons = {item["run"].rsplit("/", 1)[-1]: item["reason"] for item in left_out}
    assert reasons == {
        "cifar": f"trained on 'cifar10'; the other runs on {DIGITS!r}",
        "short": "2 epochs; the other runs 4",
        "twice": f"a second run of baseline seed 0 (the first: {runs_dir / 'baseline-seed0'})",
        "later": "in progress: checkpoint step 80 is past the results' last step 40",
        "corrupt": reasons["corrupt"],
        "keys": "results.json lacks final_top5, peak_top1, peak_epoch, delta_peak_final, strategy, seed, data",
        "types": "results.json: final_top5='95%' is not a number",
        "rows": "history.jsonl line 1 has no numeric epoch and top1",
        "running": "in progress or stopped: no results.json yet, last evaluated epoch 0",
        "restarted": "in progress: args.json differs from the arguments recorded in results.json",
    }
    assert reasons["corrupt"].startswith("corrupt results.json (")
    result = build_report(runs, left_out)
    assert result["left_out"] == left_out and len(result["runs"]) == len(CURVES)
    markdown = results_section(result)
    assert "Left out:" in markdown and f"- `{odd / 'short'}`: 2 epochs; the other runs 4" in markdown


@pytest.mark.slow  # over a second on 2 cores: the fast tier stays under a minute
def test_benchmark_throughput_replaces_the_runs_own(runs_dir, tmp_path):
    rows = [
        {"model": model, "mode": mode, "inference_images_per_s": speed, "training_images_per_s": speed / 3}
        for model, base in (("baseline", 1000.0), ("shallow", 1400.0), ("timm", 990.0))
        for mode, speed in (("eager", base), ("compiled", base * 1.5))
    ]
    benchmark = tmp_path / "benchmark.json"
    benchmark.write_text(
        json.dumps({"machine": {"device": "NVIDIA H100"}, "settings": {"dtype": "bfloat16"}, "rows": rows})
    )
    result = report_runs([runs_dir], tmp_path / "report", str(benchmark))
    assert result["strategies"]["shallow"]["benchmark"] == {
        "mode": "compiled",
        "inference_images_per_s": 2100.0,
        "training_images_per_s": 700.0,
    }
    assert result["strategies"]["grouped"]["benchmark"] is None
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "| 2,100 | 700 |" in markdown and "on NVIDIA H100" in markdown
    assert "training img/s (runs)" not in markdown


def test_a_previous_report_is_replaced(runs_dir, report, tmp_path):
    output = tmp_path / "report"
    shutil.copytree(report[0], output)
    assert report_runs([runs_dir / "baseline-seed0", runs_dir / "grouped-seed0"], output)["strategies"].keys() == {
        "baseline",
        "grouped",
    }
    assert "shallow" not in (output / "report.md").read_text()


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--output", "{tmp}/out"], "error: no run folders given; pass one or more run folders"),
        (["{tmp}/missing", "--output", "{tmp}/out"], "error: run folder '{tmp}/missing' does not exist"),
        (["{tmp}/empty", "--output", "{tmp}/out"], "error: '{tmp}/empty' is not a run folder"),
        (["{runs}", "--output", "{tmp}/busy"], "error: --output '{tmp}/busy' is in use: it holds notes.txt;"),
        (["{runs}", "--output", "{tmp}/busy/notes.txt"], "error: --output '{tmp}/busy/notes.txt' is a file"),
        (["{runs}", "--output", "{runs}/baseline-seed0"], "error: --output '{runs}/baseline-seed0' is in use"),
        (["{tmp}/stopped", "--output", "{tmp}/out"], "error: none of the 1 runs can be reported ({tmp}/stopped: in"),
        (["{runs}", "--output", "{tmp}/out", "--benchmark_json", "{tmp}/busy/notes.txt"], "error: --benchmark_json"),
        (["{runs}"], "error: the following arguments are required: --output"),
    ],
)
def test_bad_inputs_end_in_one_error_line(arguments, message, runs_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    (tmp_path / "stopped").mkdir()
    (tmp_path / "stopped" / "args.json").write_text("{}")
    argv = [a.format(tmp=tmp_path, runs=runs_dir) for a in arguments]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    text = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert text.startswith(message.format(tmp=tmp_path, runs=runs_dir)) and text.count("\n") == 1
    assert not (tmp_path / "out").exists()
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_recovery_runs_are_tabled_beside_the_from_scratch_runs_of_their_strategy(runs_dir, tmp_path):
    provenance = {
        "cut": {"strategy": "shallow", "prune_method": "taylor"},
        "distillation": {"distillation": "soft", "distillation_alpha": 0.5},
        "recovery_epochs": 2,
        "top1_before": 60.0,
        "top1_after": 88.5,
    }
    recovered = make_run(tmp_path / "recovered", "shallow", 0, [80.0, 88.5], provenance=provenance, wall_time_s=30.0)
    for name in ("shallow-seed0", "shallow-seed1"):
        results = json.loads((runs_dir / name / "results.json").read_text())
        (tmp_path / name).mkdir()
        for file in ("history.jsonl", "args.json", "config.json"):
            shutil.copy(runs_dir / name / file, tmp_path / name / file)
        (tmp_path / name / "results.json").write_text(
            json.dumps(results | {"wall_time_s": 100.0 + 20 * results["seed"]})
        )
    second = make_run(tmp_path / "recovered-again", "shallow", 1, [81.0, 88.0], provenance=provenance)
    # Two recoveries of 2 epochs against two runs of 4: the from-scratch runs still set the comparison.
    runs, left_out = collect_runs([recovered, second, tmp_path / "shallow-seed0", tmp_path / "shallow-seed1"])
    assert left_out == []  # 2 epochs against 4: a recovery is not an odd from-scratch run
    result = build_report(runs, left_out)
    assert result["strategies"]["shallow"]["seeds"] == [0, 1]
    row = result["recovery"][0]
    assert (row["cut"], row["distillation"], row["top1_before"], row["top1_after"]) == ("taylor", "soft", 60.0, 88.5)
    assert row["scratch_top1"] == (CURVES[("shallow", 0)][-1] + CURVES[("shallow", 1)][-1]) / 2
    assert row["scratch_wall_time_s"] == 110.0
    assert (
        "| `recovered` | shallow | taylor | soft | 2 | 60.00% | 88.50% | 30 s | 89.50% | 110 s |"
        in results_section(result)
    )


# Two rows as `hf-vit-reduction evaluate --results_file` writes them: a ViTReduced and a timm model.
EVALUATED = [
    {
        "model": "runs/grouped",
        "kind": "ViTReduced (grouped)",
        "top1": 91.25,
        "top5": 99.5,
        "loss": 0.31,
        "agreement": 100.0,
        "images": 360,
        "bad_images": 0,
        "images_per_s": 2345.6,
        "device": "cpu",
        "dtype": "float32",
        "batch_size": 64,
        "parameters": 141898,
        "gmacs": 0.013163968,
        "gmacs_convention": "paper",
        "strategy": "grouped",
        "mlp_parameters": 66112,
        "unique_mlps": 2,
        "expansion_ratio": 4.0,
        "label_match": "by name",
        "preprocessing": "resize 32 (bicubic), centre crop 32x32",
        "data": "digits (scikit-learn, embedded) [validation]",
        "run_top1": 91.25,
    },
    {
        "model": "timm:vit_tiny",
        "kind": "timm vit_tiny_patch16_224",
        "top1": 10.0,
        "top5": 50.0,
        "loss": 2.3,
        "agreement": 12.5,
        "images": 360,
        "bad_images": 0,
        "images_per_s": 120.0,
        "device": "cpu",
        "dtype": "float32",
        "batch_size": 64,
        "parameters": 5524234,
        "gmacs": 1.08,
        "gmacs_convention": "flop_counter",
        "strategy": None,
        "mlp_parameters": None,
        "unique_mlps": None,
        "expansion_ratio": None,
        "label_match": "by name",
        "preprocessing": "timm's evaluation transform",
        "data": "digits (scikit-learn, embedded) [validation]",
        "run_top1": None,
    },
]


@pytest.mark.slow  # over a second on 2 cores: the fast tier stays under a minute
def test_evaluations_are_tabled_beside_the_runs(runs_dir, tmp_path):
    from hf_vit_reduction.evaluation.evaluate import write_results

    scores = tmp_path / "scores.json"
    write_results(EVALUATED, str(scores))
    result = report_runs([runs_dir, scores], tmp_path / "report")
    assert result["evaluations"] == [row | {"results_file": str(scores)} for row in EVALUATED]
    assert set(result["strategies"]) == {"baseline", "grouped", "shallow", "thin"}
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "### Table 1: accuracy and stability" in markdown and "### Evaluated models" in markdown
    assert (
        "| `runs/grouped` | ViTReduced (grouped) | digits (scikit-learn, embedded) [validation] | 91.25 | 99.50 | "
        "100.00 | 141,898 | 66,112 | 2 | 0.01316 | 4.00× | 2,346 |" in markdown
    )
    assert "| `timm:vit_tiny` | timm vit_tiny_patch16_224 |" in markdown
    assert "| 12.50 | 5,524,234 | – | – | 1.08* | – | 120 |" in markdown
    assert f"`{scores}`: cpu, float32, batch 64" in markdown


def test_evaluations_alone_make_a_report_without_plots(tmp_path, capsys):
    from hf_vit_reduction.evaluation.evaluate import write_results

    as_json, as_csv = tmp_path / "scores.json", tmp_path / "scores.csv"
    write_results(EVALUATED, str(as_json))
    write_results(EVALUATED, str(as_csv))
    from_json = main([str(as_json), "--output_dir", str(tmp_path / "from_json")])["evaluations"]
    from_csv = main([str(as_csv), "--output_dir", str(tmp_path / "from_csv")])["evaluations"]
    # The CSV's rows read back as the JSON's: the same numbers, an empty cell as None.
    assert [{k: v for k, v in row.items() if k != "results_file"} for row in from_csv] == EVALUATED
    assert [row["top1"] for row in from_json] == [91.25, 10.0]
    assert sorted(p.name for p in (tmp_path / "from_csv").iterdir()) == ["report.json", "report.md"]
    out = capsys.readouterr().out
    assert "Table 1" not in out and "### Evaluated models" in out
    assert f"wrote {tmp_path / 'from_csv' / 'report.md'}, report.json\n" in out


def test_a_bad_results_file_ends_in_one_error_line(tmp_path, capsys):
    bad = tmp_path / "scores.json"
    bad.write_text(json.dumps([{"model": "m", "top1": 1.0, "top5": 2.0, "agreement": 100.0}, {"model": "n"}]))
    with pytest.raises(SystemExit):
        main([str(bad), "--output_dir", str(tmp_path / "out")])
    text = capsys.readouterr().err
    assert text == f"error: evaluation results '{bad}': row 2 lacks top1, top5, agreement\n"
    assert not (tmp_path / "out").exists()
