import pytest
import torch
import torch.nn.functional as F
from conversion_sources import MODEL_OPTIONS, unique_mlps
from image_folders import write_photo_folder
from PIL import Image
from transformers.image_utils import PILImageResampling
from transformers.models.deit.image_processing_pil_deit import DeiTImageProcessorPil

from hf_vit_reduction.conversion.calibration import (
    Calibration,
    UnitCorrelation,
    activation_importance,
    load_calibration,
    taylor_importance,
)
from hf_vit_reduction.conversion.post_hoc import matching_permutation, permuted_units
from hf_vit_reduction.image_processing_vit_reduced import Preprocessing, preprocessing_of

DIGITS = Preprocessing(32, 1.0, "center", "bicubic", (0.5,) * 3, (0.5,) * 3)


def calibration_of(count=24, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return Calibration(
        pixel_values=torch.randn(count, 3, 32, 32, generator=generator),
        labels=torch.randint(0, 10, (count,), generator=generator),
        batch_size=10,  # batches of 10, 10 and 4
    )


def test_activation_importance_is_the_mean_absolute_hidden_activation(make_model):
    model = make_model()
    calibration = calibration_of()
    hidden = []
    hooks = [m.fc2.register_forward_pre_hook(lambda m, a: hidden.append(a[0])) for m in unique_mlps(model)]
    with torch.no_grad():
        model(calibration.pixel_values)  # one batch of all images: the mean must not depend on the batching
    for hook in hooks:
        hook.remove()
    for expected, scores in zip(hidden, activation_importance(model, calibration)):
        torch.testing.assert_close(scores, expected.abs().mean(dim=(0, 1)))


@pytest.mark.parametrize("options", [{}, *MODEL_OPTIONS.values()], ids=["vit", *MODEL_OPTIONS])
@pytest.mark.slow  # over a second on 2 cores: the fast tier stays under a minute
def test_taylor_importance_is_the_first_order_loss_change_per_image(make_model, options):
    # Through the model's own head: its pooling (class token, average, MAP) and, distilled, its two heads' mean.
    model = make_model(**options)
    calibration = calibration_of(count=12)
    calibration.batch_size = 5  # batches of 5, 5 and 2
    mlp = model.vit.layers[2].mlp
    images, labels = calibration.pixel_values, calibration.labels
    expected = torch.zeros(mlp.fc1.out_features)
    for image, label in zip(images, labels):
        # The hidden activation as a leaf of its own: replace the fc2 input, differentiate the image's loss.
        captured = {}

        def leaf(module, args, captured=captured):
            captured["a"] = args[0].detach().requires_grad_()
            return (captured["a"],)

        hook = mlp.fc2.register_forward_pre_hook(leaf)
        loss = F.cross_entropy(model(image[None]).logits, label[None])
        hook.remove()
        (gradient,) = torch.autograd.grad(loss, captured["a"])
        expected += (captured["a"] * gradient).sum(dim=1).abs().sum(dim=0).detach()
    torch.testing.assert_close(taylor_importance(model, calibration)[2], expected, rtol=1e-4, atol=1e-7)
    assert all(p.grad is None for p in model.parameters())


def test_a_permuted_copy_of_an_mlp_aligns_back_exactly(make_model):
    mlp = make_model(seed=5).vit.layers[0].mlp
    original = {name: p.detach() for name, p in mlp.named_parameters()}
    permutation = torch.randperm(256, generator=torch.Generator().manual_seed(1))
    copy = permuted_units(original, permutation)
    inputs = torch.randn(40, 17, 64, generator=torch.Generator().manual_seed(2))

    def hidden(state):
        return F.gelu(F.linear(inputs, state["fc1.weight"], state["fc1.bias"]))

    correlation = UnitCorrelation()
    for batch in (slice(0, 25), slice(25, 40)):  # accumulated over two batches
        correlation.update(hidden(original)[batch], hidden(copy)[batch])
    matched = correlation.correlation()
    # Original unit i is the copy's unit permutation.argsort()[i]: perfectly correlated.
    torch.testing.assert_close(matched[torch.arange(256), permutation.argsort()], torch.ones(256, dtype=torch.float64))
    restored = permuted_units(copy, matching_permutation(matched))
    assert all(torch.equal(restored[name], original[name]) for name in original)


@pytest.mark.slow  # over a second on 2 cores: the fast tier stays under a minute
def test_calibration_images_are_a_seeded_sample_of_the_training_split():
    first = load_calibration(samples=12, seed=3, preprocessing=DIGITS)
    again = load_calibration(samples=12, seed=3, preprocessing=DIGITS)
    other = load_calibration(samples=12, seed=4, preprocessing=DIGITS)
    assert first.pixel_values.shape == (12, 3, 32, 32) and first.source.startswith("digits")
    assert torch.equal(first.pixel_values, again.pixel_values) and torch.equal(first.labels, again.labels)
    assert not torch.equal(first.pixel_values, other.pixel_values)
    # The evaluation transform: grey digits in [-1, 1] (mean = std = 0.5), the same in every channel, no erasing.
    assert first.pixel_values.min() >= -1 and first.pixel_values.max() <= 1
    assert torch.equal(first.pixel_values[:, 0], first.pixel_values[:, 2])


def test_calibration_refuses_zero_images_and_more_than_the_split_holds():
    kwargs = {"seed": 0, "preprocessing": DIGITS}
    with pytest.raises(ValueError, match="--calibration_samples 0 is not valid; allowed: an integer >= 1"):
        load_calibration(samples=0, **kwargs)
    with pytest.raises(ValueError, match="--calibration_samples 5000 is more than the 1437 training images of digits"):
        load_calibration(samples=5000, **kwargs)


def test_calibration_images_are_what_the_models_processor_gives_every_field_of_it(tmp_path):
    # Every value unlike the digits' and timm's defaults: squash, crop 48 of 60 (crop_pct 0.8), bilinear, own mean/std.
    processor = DeiTImageProcessorPil(
        size={"height": 60, "width": 60},
        crop_size={"height": 48, "width": 48},
        resample=PILImageResampling.BILINEAR,
        image_mean=[0.2, 0.3, 0.4],
        image_std=[0.6, 0.5, 0.4],
    )
    folder = write_photo_folder(tmp_path / "train", per_class=4)
    # 6 of the 8 photos are the training split (15% held out for validation): calibrate on all 6.
    calibration = load_calibration(samples=6, seed=0, preprocessing=preprocessing_of(processor), train_dir=str(folder))
    assert calibration.pixel_values.shape == (6, 3, 48, 48)
    photos = [
        (label, processor(Image.open(path).convert("RGB"), return_tensors="pt").pixel_values[0])
        for label, name in enumerate(("china", "flower"))
        for path in sorted((folder / name).iterdir())
    ]
    # Each calibration image is one photo of its class as Transformers' own DeiT processor (PIL) gives it.
    matched = set()
    for pixels, label in zip(calibration.pixel_values, calibration.labels):
        distances = [(pixels - expected).abs().max().item() if c == label else float("inf") for c, expected in photos]
        closest = min(range(len(photos)), key=distances.__getitem__)
        assert distances[closest] < 1e-5
        matched.add(closest)
    assert len(matched) == 6
