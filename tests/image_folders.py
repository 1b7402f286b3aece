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


def sample_photos(count, seed=0):
    """Real photos of many shapes: scikit-learn's two (640 x 427), then random crops of them (none square)."""
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(pixels) for pixels in load_sample_images().images]
    rng = np.random.default_rng(seed)
    while len(photos) < count:
        photo = photos[len(photos) % 2]
        width, height = int(rng.integers(40, photo.width + 1)), int(rng.integers(40, photo.height + 1))
        if width == height:
            continue
        left, top = int(rng.integers(0, photo.width - width + 1)), int(rng.integers(0, photo.height - height + 1))
        photos.append(photo.crop((left, top, left + width, top + height)))
    return photos[:count]


def write_photo_folder(root, classes=("china", "flower"), per_class=4, seed=0):
    """An image folder of real, non-square photos (PNG, so every reader decodes the same pixels)."""
    photos = iter(sample_photos(len(classes) * per_class, seed))
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            next(photos).save(root / name / f"{i}.png")
    return root


def oversized_png(path):
    """A real PNG of 200 megapixels, more than Pillow's decompression-bomb limit (24 kB: 1-bit zeros)."""
    Image.new("1", (20_000, 10_000)).save(path)
