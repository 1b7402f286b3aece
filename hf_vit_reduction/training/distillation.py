"""Knowledge distillation from a teacher classifier, for recovering a cut model: the flags, the teacher, the loss.

The teacher is any 🤗 Transformers image classifier with the run's labels, image size and normalization. It sees
exactly the student's batch (after Mixup/CutMix and erasing), in eval mode, without gradients, under the caller's
autocast. It is never prepared by Accelerate, so it is in no optimizer, EMA, checkpoint, saved model or DDP
gradient sync; in eval mode it draws no random numbers, so a resumed run is the same run.

- `soft` (Hinton et al.): KL(teacher || student) of the softmaxes at temperature T, averaged over the batch and
  scaled by T² so that its gradients keep their size as T changes.
- `hard` (DeiT, Touvron et al. 2021): cross-entropy of the student's logits with the teacher's top-1 class.

The loss is (1 - alpha) x the run's loss on its targets + alpha x the distillation term.
"""

import argparse

import torch
import torch.nn.functional as F

DISTILLATION_MODES = ("soft", "hard")


def add_distillation_arguments(group) -> None:
    group.add_argument(
        "--teacher_model_name_or_path",
        default=None,
        help="a folder or Hub id of a Transformers image classifier with the same labels",
    )
    group.add_argument("--distillation", choices=DISTILLATION_MODES, default=None, help="soft with a teacher")
    group.add_argument("--distillation_temperature", type=float, default=1.0, help="soft: the softmax temperature")
    group.add_argument("--distillation_alpha", type=float, default=0.5, help="weight of the distillation term")


def check_distillation_arguments(args: argparse.Namespace) -> str | None:
    """The problem with the distillation flags, or None (without --distillation, a teacher's is soft)."""
    if args.teacher_model_name_or_path is None:
        if args.distillation is not None:
            return f"--distillation={args.distillation!r} needs --teacher_model_name_or_path"
        return None
    if not args.distillation_temperature > 0:
        return f"--distillation_temperature={args.distillation_temperature!r} is not valid; allowed: a number > 0"
    if not 0 <= args.distillation_alpha <= 1:
        return f"--distillation_alpha={args.distillation_alpha!r} is not valid; allowed: a number in [0, 1]"
    return None


def soft_distillation_loss(student_logits, teacher_logits, temperature: float) -> torch.Tensor:
    """KL(teacher || student) at `temperature`, summed over classes, averaged over the batch, times T²."""
    student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return F.kl_div(student, teacher, reduction="batchmean", log_target=True) * temperature**2


def hard_distillation_loss(student_logits, teacher_logits) -> torch.Tensor:
    """DeiT's hard-label distillation: cross-entropy with the teacher's top-1 class."""
    return F.cross_entropy(student_logits, teacher_logits.argmax(dim=-1))


class Distiller:
    """Adds the teacher's term to a training loss: `distiller(loss, student_logits, images)`."""

    def __init__(self, teacher: torch.nn.Module, *, mode: str, alpha: float, temperature: float):
        if mode not in DISTILLATION_MODES:
            raise ValueError(f"distillation={mode!r} is not valid; allowed: 'soft', 'hard'")
        self.teacher = teacher.eval().requires_grad_(False)
        self.mode, self.alpha, self.temperature = mode, alpha, temperature

    def __call__(self, loss: torch.Tensor, student_logits: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = self.teacher(pixel_values=images).logits
        if self.mode == "soft":
            term = soft_distillation_loss(student_logits, teacher_logits, self.temperature)
        else:
            term = hard_distillation_loss(student_logits, teacher_logits)
        return (1 - self.alpha) * loss + self.alpha * term

    def describe(self) -> dict:
        """What the provenance records of this distillation."""
        return {
            "teacher": getattr(self.teacher, "name_or_path", None),
            "distillation": self.mode,
            "distillation_alpha": self.alpha,
            **({"distillation_temperature": self.temperature} if self.mode == "soft" else {}),
        }


def load_teacher(name_or_path: str, *, label_names: list[str], image_size: int, mean, std, device) -> torch.nn.Module:
    """The teacher at `name_or_path`, checked against the run: labels in the same order, the same image size and
    normalization (from its image processor). A mismatch is a ValueError naming what differs."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    flag = f"--teacher_model_name_or_path={name_or_path!r}"
    try:
        teacher = AutoModelForImageClassification.from_pretrained(name_or_path)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"{flag} is neither a folder holding a saved image classifier nor one in the local Hub cache: "
            f"{str(error).splitlines()[0]}"
        ) from None
    config = teacher.config
    teacher_labels = [config.id2label[i] for i in range(config.num_labels)]
    if teacher_labels != list(label_names):
        raise ValueError(
            f"{flag} predicts the labels {_shorten(teacher_labels)}; allowed: the run's labels, in its order: "
            f"{_shorten(label_names)}"
        )
    teacher_size = getattr(config, "image_size", None)
    if teacher_size != image_size:
        raise ValueError(f"{flag} takes {teacher_size} px images; allowed: the student's {image_size} px")
    try:
        processor = AutoImageProcessor.from_pretrained(name_or_path)
    except (OSError, ValueError):
        processor = None
    teacher_normalization = None if processor is None else (processor.image_mean, processor.image_std)
    if teacher_normalization is None or not _same(teacher_normalization, (mean, std)):
        found = (
            "no image processor"
            if processor is None
            else f"mean {list(processor.image_mean)}, std {list(processor.image_std)}"
        )
        raise ValueError(
            f"{flag} normalizes its images differently ({found}); allowed: the run's mean {list(mean)}, std {list(std)}"
        )
    return teacher.to(device).eval().requires_grad_(False)


def _same(a, b) -> bool:
    return all(len(list(x)) == len(list(y)) and all(abs(u - v) < 1e-6 for u, v in zip(x, y)) for x, y in zip(a, b))


def _shorten(labels: list[str], limit: int = 6) -> str:
    shown = ", ".join(map(str, labels[:limit]))
    return f"[{shown}{', ...' if len(labels) > limit else ''}] ({len(labels)})"
