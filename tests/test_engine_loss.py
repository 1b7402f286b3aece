"""What the engine's update puts into the loss and the gradient, from the outside: one real update of the engine
(`train_one_epoch`) is recorded (its augmented batch, targets, logits, the loss it hands to backward, the gradient
the optimizer steps with) and checked against hand computations of the terms it adds or scales: the teacher's term,
label smoothing, Mixup's targets and gradient accumulation.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from engine_recording import recorded_updates
from test_distillation import save_digits_teacher

from hf_vit_reduction.training import engine

ALPHA, TEMPERATURE, SMOOTHING = 0.3, 2.0, 0.1


def one_update(tmp_path, *flags) -> tuple[dict, dict]:
    """One update of the engine on the embedded digits (8 images a batch, nothing random but the data's order and
    the flags' augmentation), recorded; and the student as it was before the update."""
    config = engine.parse_args(
        [
            *("--max_train_samples", "64", "--batch_size", "8", "--max_train_steps", "1", "--workers", "0"),
            *("--reprob", "0", "--drop_path", "0", "--no-model_ema", "--report_to", "none"),
            *("--output_dir", str(tmp_path / "out"), *flags),
        ]
    )
    with engine.running(config) as run:
        initial = copy.deepcopy(run.unwrapped_model)
        with recorded_updates(run) as seen:
            engine.train_one_epoch(run, 0)
        seen["mean"], seen["std"] = run.normalize.mean.clone(), run.normalize.std.clone()
    return seen, initial


def soft_cross_entropy(logits, targets):
    return (-targets * logits.log_softmax(-1)).sum(-1).mean()


def test_the_update_s_loss_is_the_run_s_loss_plus_exactly_the_teacher_s_term(tmp_path, make_model):
    teacher = save_digits_teacher(make_model, tmp_path / "teacher")  # mean = std = 0.5, as its processor says
    seen, _ = one_update(
        tmp_path,
        *("--teacher_model_name_or_path", str(tmp_path / "teacher"), "--distillation", "soft"),
        *("--distillation_alpha", str(ALPHA), "--distillation_temperature", str(TEMPERATURE)),
    )
    (batch,), (loss,), (run_loss,) = seen["batches"], seen["losses"], seen["criterion"]
    # The teacher sees the augmented batch's pixels normalized as its own processor normalizes them.
    pixels = batch["mixed"] * seen["std"] + seen["mean"]
    with torch.no_grad():
        teacher_logits = teacher(pixel_values=(pixels - 0.5) / 0.5).logits
    # KL(teacher || student) at temperature T, by hand: sum_c p_t (log p_t - log p_s), batch mean, times T².
    p_teacher = (teacher_logits / TEMPERATURE).softmax(-1)
    log_p_student = (batch["logits"] / TEMPERATURE).log_softmax(-1)
    kl = (p_teacher * (p_teacher.log() - log_p_student)).sum(-1).mean() * TEMPERATURE**2
    assert kl > 1e-3  # the teacher disagrees with the student: its term is no rounding error
    assert loss.item() == pytest.approx((1 - ALPHA) * run_loss.item() + ALPHA * kl.item(), rel=1e-5)


def test_the_hard_teacher_term_is_cross_entropy_with_the_teacher_s_top_class(tmp_path, make_model):
    teacher = save_digits_teacher(make_model, tmp_path / "teacher")
    seen, _ = one_update(
        tmp_path,
        *("--teacher_model_name_or_path", str(tmp_path / "teacher"), "--distillation", "hard"),
        *("--distillation_alpha", str(ALPHA), "--mixup", "0", "--cutmix", "0", "--smoothing", "0"),
    )
    (batch,), (loss,) = seen["batches"], seen["losses"]
    pixels = batch["mixed"] * seen["std"] + seen["mean"]
    with torch.no_grad():
        top = teacher(pixel_values=(pixels - 0.5) / 0.5).logits.argmax(-1)
    log_p = batch["logits"].log_softmax(-1)
    rows = torch.arange(len(top))
    expected = (1 - ALPHA) * -log_p[rows, batch["labels"]].mean() + ALPHA * -log_p[rows, top].mean()
    assert not top.equal(batch["labels"])  # the two terms differ
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_label_smoothing_without_mixing_is_timm_s_smoothed_cross_entropy_by_hand(tmp_path):
    seen, _ = one_update(tmp_path, "--mixup", "0", "--cutmix", "0", "--smoothing", str(SMOOTHING))
    (batch,), (loss,) = seen["batches"], seen["losses"]
    assert batch["targets"].equal(batch["labels"]) and batch["mixed"].equal(batch["images"])
    log_p = batch["logits"].log_softmax(-1)
    nll = -log_p[torch.arange(len(log_p)), batch["labels"]]
    expected = ((1 - SMOOTHING) * nll + SMOOTHING * -log_p.mean(-1)).mean()
    assert expected.item() != pytest.approx(nll.mean().item(), rel=1e-3)  # smoothing moves this loss
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_mixup_targets_mix_the_smoothed_labels_as_the_images_are_mixed(tmp_path):
    seen, _ = one_update(tmp_path, "--mixup", "0.8", "--cutmix", "0", "--smoothing", str(SMOOTHING))
    (batch,), (loss,) = seen["batches"], seen["losses"]
    images, mixed, labels = batch["images"], batch["mixed"], batch["labels"]
    # timm pairs image i with image n-1-i: mixed = lam x + (1 - lam) x.flip(0); lam by least squares.
    other = images.flip(0)
    lam = ((mixed - other) * (images - other)).sum() / ((images - other) ** 2).sum()
    assert torch.allclose(mixed, lam * images + (1 - lam) * other, atol=1e-5) and 0 < lam < 1
    classes = batch["targets"].shape[1]
    off, on = SMOOTHING / classes, 1 - SMOOTHING + SMOOTHING / classes
    smoothed = F.one_hot(labels, classes) * (on - off) + off
    targets = lam * smoothed + (1 - lam) * smoothed.flip(0)
    assert torch.allclose(batch["targets"], targets, atol=1e-6)
    assert loss.item() == pytest.approx(soft_cross_entropy(batch["logits"], targets).item(), rel=1e-5)


def test_an_accumulated_update_steps_with_the_gradient_of_the_micro_batches_mean_loss(tmp_path):
    flags = ("--grad_accum_steps", "2", "--mixup", "0", "--cutmix", "0", "--smoothing", "0")
    seen, initial = one_update(tmp_path, *flags)
    assert len(seen["batches"]) == 2
    # The same two micro-batches through the student as it was before the update, by hand.
    initial.train()
    losses = [F.cross_entropy(initial(pixel_values=b["mixed"]).logits, b["labels"]) for b in seen["batches"]]
    (sum(losses) / 2).backward()
    for name, parameter in initial.named_parameters():
        assert torch.allclose(seen["grads"][name], parameter.grad, atol=1e-6, rtol=1e-4), name
