import json
import math
import statistics

import pytest

from hf_vit_reduction.study import data_benchmark


def test_jpeg_folder_and_both_loaders(tmp_path):
    folder = tmp_path / "jpeg"
    assert data_benchmark.make_jpeg_folder(folder, size=48, limit=40) == 40
    files = sorted(folder.glob("*/*.jpg"))
    assert len(files) == 40 and {f.parent.name for f in files} <= {str(d) for d in range(10)}
    out = tmp_path / "speed.json"
    data_benchmark.main(
        [
            "--folder",
            str(folder),
            "--workers",
            "0",
            "--batch_size",
            "8",
            "--batches",
            "2",
            "--warmup",
            "1",
            "--image_size",
            "32",
            "--rounds",
            "2",
            "--output_json",
            str(out),
        ]
    )
    rows = json.loads(out.read_text())
    assert [row["loader"].split()[0] for row in rows] == ["ours", "timm"]
    for row in rows:
        assert math.isfinite(row["images_per_s"]) and row["images_per_s"] > 0
        assert len(row["images_per_s_each_round"]) == 2
        assert row["images_per_s"] == statistics.median(row["images_per_s_each_round"])
        assert row["images_per_s_per_worker"] == row["images_per_s"]  # no workers: counted as one


def test_asking_for_more_batches_than_the_folder_holds_fails_first(tmp_path):
    data_benchmark.make_jpeg_folder(tmp_path, size=48, limit=20)
    loader = data_benchmark.our_loader(tmp_path, 0, 8, 32)  # 19 train images: 2 full batches
    with pytest.raises(ValueError, match=r"batches=3 \+ warmup=1 exceeds the 2 batches"):
        data_benchmark.images_per_second(loader, batches=3, warmup=1, seed=0)
