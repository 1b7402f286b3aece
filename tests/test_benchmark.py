import json
import math

import pytest
import torch

from hf_vit_reduction.study.benchmark import MODELS, main

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
