"""Image folders for tests, in ImageNet's layout (<class>/<image>)."""

import io

import numpy as np
from PIL import Image


def write_folder(root, classes=("cat", "dog"), per_class=3, size=12):
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.new("RGB", (size, size), (40 * c, 10 * i, 0)).save(root / name / f"{i}.png")
    return root


def truncated_jpeg(path):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
