import json
import math
from types import SimpleNamespace

import pytest
import torch

from hf_vit_reduction import REDUCTION_STRATEGIES, ViTReducedConfig
from hf_vit_reduction.study import benchmark
from hf_vit_reduction.study.benchmark import MODELS, main
from hf_vit_reduction.summary import summarize

# Tiny and single-threaded: two OpenMP threads on a shared two-core machine cost milliseconds per op.
TINY = [
    "--device",
    "cpu",
    "--preset",
    "digits",
    "--image_size",
    "16",
    "--num_labels",
    "10",
    "--batch_size",
    "2",
    "--train_batch_size",
    "2",
    "--warmup",
    "1",
    "--repeats",
    "2",
    "--threads",
    "1",
]


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow  # tens of seconds on 2 cores: the slow tier
def test_benchmark_runs_on_cpu_and_writes_table_and_json(tmp_path, capsys, restore_threads):
    main([*TINY, "--output_json", str(tmp_path / "results.json")])
    table = capsys.readouterr().out
    results = json.loads((tmp_path / "results.json").read_text())

    assert results["settings"]["dtype"] == "float32"
    assert results["settings"]["compile"] is False
    assert results["settings"]["image_size"] == 16
    assert results["settings"]["keep_freed_memory"] is False
    assert "not measured on CPU" in results["peak_memory"]
    rows = {row["model"]: row for row in results["rows"]}
    assert list(rows) == list(MODELS)
    assert {row["mode"] for row in rows.values()} == {"eager"}
    for row in rows.values():
        for key in (
            "parameters",
            "gmacs",
            "inference_images_per_s",
            "training_images_per_s",
        ):
            assert math.isfinite(row[key]) and row[key] > 0, (row["model"], key)
        for kind in ("inference", "training"):
            for reference in ("transformers", "timm", "baseline"):
                ratio = row[f"{kind}_vs_{reference}"]
                assert math.isfinite(ratio) and ratio > 0
                expected = row[f"{kind}_images_per_s"] / rows[reference][f"{kind}_images_per_s"]
                assert ratio == pytest.approx(expected)
        assert row["inference_peak_memory_mib"] is None
    # The anchors are the baseline's architecture: same parameters and MACs.
    assert rows["baseline"]["parameters"] == rows["transformers"]["parameters"] == rows["timm"]["parameters"]
    assert rows["timm"]["gmacs"] == rows["baseline"]["gmacs"]
    assert rows["shallow"]["gmacs"] < rows["baseline"]["gmacs"]
    assert rows["grouped"]["parameters"] < rows["baseline"]["parameters"]
    assert rows["timm"]["inference_vs_timm"] == 1.0

    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| model | mode | parameters | GMACs | inference img/s")
    assert len(lines) == 1 + len(MODELS)
    assert "| ViTReduced shallow | eager |" in table
    assert "| timm vit_base_patch16_224 | eager |" in table
    assert "batch 2 inference / 2 training" in table


# Seconds one (inference, training) step of each model takes on a planted clock.
PLANTED_SECONDS = {
    "baseline": (0.02, 0.1),
    "shallow": (0.01, 0.05),
    "grouped": (0.02, 0.08),
    "thin": (0.016, 0.064),
    "transformers": (0.025, 0.2),
    "timm": (0.04, 0.16),
}
# By hand: images/s = batch / seconds, inference at batch 2, training at batch 4.
PLANTED_RATES = {
    "baseline": (100, 40),
    "shallow": (200, 80),
    "grouped": (100, 50),
    "thin": (125, 62.5),
    "transformers": (80, 20),
    "timm": (50, 25),
}
# By hand: (inference, training) rate over the Transformers, timm and baseline rows' rates.
PLANTED_RATIOS = {
    "baseline": {"transformers": (1.25, 2.0), "timm": (2.0, 1.6), "baseline": (1.0, 1.0)},
    "shallow": {"transformers": (2.5, 4.0), "timm": (4.0, 3.2), "baseline": (2.0, 2.0)},
    "grouped": {"transformers": (1.25, 2.5), "timm": (2.0, 2.0), "baseline": (1.0, 1.25)},
    "thin": {"transformers": (1.5625, 3.125), "timm": (2.5, 2.5), "baseline": (1.25, 1.5625)},
    "transformers": {"transformers": (1.0, 1.0), "timm": (1.6, 0.8), "baseline": (0.8, 0.5)},
    "timm": {"transformers": (0.625, 1.25), "timm": (1.0, 1.0), "baseline": (0.5, 0.625)},
}


def test_benchmark_rates_ratios_and_gmacs_from_a_planted_clock(monkeypatch, restore_threads):
    now = [0.0]

    def planted_step(kind):
        def make(name, config, settings, compiled):
            seconds = PLANTED_SECONDS[name][kind]
            # The warm-up step, then three timed repeats whose median is `seconds` (their mean is not).
            durations = iter([100 * seconds, seconds, 3 * seconds, seconds / 2])
            return lambda: now.__setitem__(0, now[0] + next(durations))

        return make

    monkeypatch.setattr(benchmark, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    # Full garbage collections between models only tidy memory (and cost up to a second each on a loaded machine).
    monkeypatch.setattr(benchmark, "gc", SimpleNamespace(collect=lambda: 0))
    monkeypatch.setattr(benchmark, "inference_step", planted_step(0))
    monkeypatch.setattr(benchmark, "training_step", planted_step(1))
    argv = [*TINY[:8], *("--batch_size", "2", "--train_batch_size", "4", "--warmup", "1", "--repeats", "3")]
    rows = {row["model"]: row for row in main([*argv, "--steps", "1", "--threads", "1"])["rows"]}
    assert list(rows) == list(MODELS)
    for name, row in rows.items():
        assert (row["inference_images_per_s"], row["training_images_per_s"]) == pytest.approx(PLANTED_RATES[name])
        for reference, (inference, training) in PLANTED_RATIOS[name].items():
            assert row[f"inference_vs_{reference}"] == pytest.approx(inference), (name, reference)
            assert row[f"training_vs_{reference}"] == pytest.approx(training), (name, reference)
        # The anchors are built at the baseline's architecture.
        strategy = name if name in REDUCTION_STRATEGIES else "baseline"
        config = ViTReducedConfig.from_preset("digits", reduction_strategy=strategy, image_size=16, num_labels=10)
        summary = summarize(config)
        assert row["gmacs"] == pytest.approx(summary["gmacs"]), name
        assert row["parameters"] == summary["num_parameters"], name
        # The first warm-up step, timed on its own (under compile: the compile): 100 x a timed step's seconds.
        first = (row["inference_first_step_s"], row["training_first_step_s"])
        assert first == pytest.approx(tuple(100 * seconds for seconds in PLANTED_SECONDS[name])), name


@pytest.mark.slow  # times real steps
def test_benchmark_subset_without_anchors(capsys, restore_threads):
    results = main([*TINY, "--models", "shallow", "baseline", "--keep_freed_memory"])
    assert results["settings"]["keep_freed_memory"] is True
    assert [row["model"] for row in results["rows"]] == ["shallow", "baseline"]
    shallow = results["rows"][0]
    assert shallow["inference_vs_timm"] is None
    assert shallow["inference_vs_baseline"] > 0
    assert "| ViTReduced shallow | eager |" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--models", "vit"], "invalid choice: 'vit'"),
        (["--batch_size", "0"], "0 is not valid; allowed: >= 1"),
        (["--device", "tpu"], "--device tpu is not valid; allowed: cuda, cpu"),
        (["--image_size", "30"], "patch_size=4 is not valid; allowed: a divisor"),
    ],
)
def test_benchmark_refuses_bad_arguments(capsys, argv, message):
    with pytest.raises(SystemExit):
        main(["--device", "cpu", "--preset", "digits", *argv])
    assert message in capsys.readouterr().err


def test_compiled_and_eager_are_timed_in_the_same_rounds(monkeypatch, restore_threads):
    calls = []

    def planted(name, config, settings, compiled):
        return lambda: calls.append((name, "compiled" if compiled else "eager"))

    monkeypatch.setattr(benchmark, "gc", SimpleNamespace(collect=lambda: 0))
    monkeypatch.setattr(benchmark.torch._dynamo, "reset", lambda: None)
    monkeypatch.setattr(benchmark, "inference_step", planted)
    monkeypatch.setattr(benchmark, "training_step", planted)
    argv = [*TINY[:8], "--models", "baseline", "timm", "--warmup", "1", "--repeats", "2", "--steps", "1"]
    results = main([*argv, "--compile", "--threads", "1"])
    every = [(name, mode) for mode in ("eager", "compiled") for name in ("baseline", "timm")]
    # Inference: one warm-up step each, then two rounds over all four; then the same for training.
    assert calls == (every + every + every) * 2
    assert [(row["model"], row["mode"]) for row in results["rows"]] == every


def test_bench_train_times_only_training_steps_and_leaves_inference_empty(monkeypatch, capsys, restore_threads):
    calls = []

    def planted(kind):
        def make(name, config, settings, compiled):
            return lambda: calls.append((kind, name, "compiled" if compiled else "eager"))

        return make

    monkeypatch.setattr(benchmark, "gc", SimpleNamespace(collect=lambda: 0))
    monkeypatch.setattr(benchmark.torch._dynamo, "reset", lambda: None)
    monkeypatch.setattr(benchmark, "inference_step", planted("inference"))
    monkeypatch.setattr(benchmark, "training_step", planted("training"))
    argv = [*TINY[:8], "--models", "baseline", "timm", "--warmup", "1", "--repeats", "1", "--steps", "1"]
    results = main([*argv, "--compile", "--bench", "train", "--threads", "1"])
    assert {kind for kind, _, _ in calls} == {"training"}  # no inference model built, so none compiled
    assert results["settings"]["bench"] == ["training"]
    for row in results["rows"]:
        assert row["training_images_per_s"] > 0 and row["training_vs_timm"] > 0
        assert [row[f"inference_{field}"] for field in ("images_per_s", "first_step_s", "vs_timm")] == [None] * 3
    baseline_row = next(line for line in capsys.readouterr().out.splitlines() if "| ViTReduced baseline |" in line)
    assert baseline_row.split(" | ")[4:8] == ["–"] * 4  # the inference rate and its three ratios
