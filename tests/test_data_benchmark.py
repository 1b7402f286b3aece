import json
import math
import statistics

import pytest
from PIL import Image

from hf_vit_reduction.study import data_benchmark


def test_photo_folder_holds_crops_of_both_sample_photos(tmp_path):
    assert data_benchmark.make_photo_folder(tmp_path, size=(50, 36), count=6) == 6
    files = sorted(tmp_path.glob("*/*.jpg"))
    assert [f.parent.name for f in files] == ["china"] * 3 + ["flower"] * 3
    for file in files:
        with Image.open(file) as image:
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (50, 36))


def test_both_loaders_are_measured_side_by_side(tmp_path, capsys):
    folder = tmp_path / "photos"
    data_benchmark.make_photo_folder(folder, size=(64, 48), count=40)
    out = tmp_path / "speed.json"
    data_benchmark.main(
        [
            *("--folder", str(folder), "--workers", "0", "--batch_size", "8", "--warmup", "1"),
            *("--image_size", "32", "--rounds", "2", "--output_json", str(out)),
        ]
    )
    report = json.loads(out.read_text())
    rows = report["speed"]
    assert [row["loader"] for row in rows] == ["ours", "timm"]
    medians = {}
    for row in rows:
        assert math.isfinite(row["images_per_s"]) and row["images_per_s"] > 0
        assert len(row["images_per_s_each_round"]) == 2
        assert row["images_per_s"] == statistics.median(row["images_per_s_each_round"])
        assert row["images_per_s_per_worker"] == row["images_per_s"]  # no workers: counted as one
        medians[row["loader"]] = row["images_per_s"]
    assert rows[0]["ours_over_timm"] == rows[1]["ours_over_timm"] == medians["ours"] / medians["timm"]
    # The workers' own figure: uint8 batches/s, each round a pass of 4 batches (39 images of ours, 40 of timm's, in
    # 8s) after 1 of warm-up; the median over rounds, per worker (none: the main process counted as one).
    workers = {}
    for row in rows:
        assert len(row["uint8_batches_per_s_each_round"]) == 2 and row["uint8_batches_per_s"] > 0
        assert row["uint8_batches_per_s"] == statistics.median(row["uint8_batches_per_s_each_round"])
        assert row["uint8_batches_per_s_per_worker"] == row["uint8_batches_per_s"]
        workers[row["loader"]] = row["uint8_batches_per_s"]
    assert rows[0]["workers_ours_over_timm"] == workers["ours"] / workers["timm"]
    # decode_jpeg and uint8 tensors against PIL on timm's boxes: an antialiased bilinear resize, within a grey level
    # on average of PIL's.
    paths = report["decode_paths"][str(folder)]
    assert paths["images"] == 40 and set(paths["ms_per_image"]) == {"pil", "decode_jpeg"}
    assert paths["mean_abs_difference"] < 1.0 and paths["max_abs_difference"] <= 255
    # 64 x 48 photos never allow a reduced decode for a 32 px crop (that needs a box of 64 x 64): all decoded whole.
    assert report["reduced_decode"][str(folder)]["reduced_share"] == 0
    assert report["epoch_start_seconds"] == {}  # no workers to start
    assert "| photos | 0 |" in capsys.readouterr().out


def test_the_reduced_decode_of_large_photos_is_measured(tmp_path):
    data_benchmark.make_photo_folder(tmp_path, size=(640, 480), count=4)
    difference = data_benchmark.reduced_decode_difference(tmp_path, image_size=32, crops=8)
    assert difference["reduced_share"] == 1.0  # every box of a 640 x 480 photo spans 64 px or more
    assert 0 < difference["mean_abs_difference"] <= 2.5
    assert difference["mean_abs_difference"] <= difference["p99_abs_difference"] <= 30


def test_asking_for_more_warmup_than_the_folder_holds_fails_first(tmp_path):
    data_benchmark.make_photo_folder(tmp_path, size=(48, 48), count=20)
    pipeline = data_benchmark.OurPipeline(tmp_path, 0, 8, 32)  # 19 train images: 2 full batches
    with pytest.raises(ValueError, match=r"warmup=2 leaves none of the 2 batches"):
        data_benchmark.images_per_second(pipeline, warmup=2)


def test_without_a_folder_it_says_so_in_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        data_benchmark.main(["--workers", "1"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: give --photos DIR or --folder DIR ...\n"
