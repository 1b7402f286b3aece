import json
import math

from hf_vit_reduction import data_benchmark as B


def test_jpeg_folder_and_both_loaders(tmp_path):
    folder = tmp_path / "jpeg"
    assert B.make_jpeg_folder(folder, size=48, limit=40) == 40
    files = sorted(folder.glob("*/*.jpg"))
    assert len(files) == 40 and {f.parent.name for f in files} <= {
        str(d) for d in range(10)
    }
    out = tmp_path / "speed.json"
    B.main(["--folder", str(folder), "--workers", "0", "--batch_size", "8", "--batches", "2", "--warmup", "1",
            "--image_size", "32", "--output_json", str(out)])  # fmt: skip
    rows = json.loads(out.read_text())
    assert [row["loader"].split()[0] for row in rows] == ["ours", "timm"]
    for row in rows:
        assert math.isfinite(row["images_per_s"]) and row["images_per_s"] > 0
        assert (
            row["images_per_s_per_worker"] == row["images_per_s"]
        )  # no workers: counted as one
