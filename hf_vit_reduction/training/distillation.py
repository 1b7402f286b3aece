"""Knowledge distillation from a teacher classifier, for recovering a cut model: the flags, the teacher, the loss.

The teacher is any 🤗 Transformers image classifier with the run's labels (in any order: its classifier rows are
put in the data's) and a saved image processor. It sees the student's batch (after Mixup/CutMix and erasing): the
same pixels, re-normalized with its own mean and std and resized to its own size when that differs, on the device,
in eval mode, without gradients, under the caller's autocast. It is never prepared by Accelerate, so it is in no optimizer, EMA, checkpoint, saved model or DDP
gradient sync; in eval mode it draws no random numbers, so a resumed run is the same run.

- `soft` (Hinton et al.): KL(teacher || student) of the softmaxes at temperature T, averaged over the batch and
  scaled by T² so that its gradients keep their size as T changes.
- `hard` (DeiT, Touvron et al. 2021): cross-entropy of the student's logits with the teacher's top-1 class.

The loss is (1 - alpha) x the run's loss on its targets + alpha x the distillation term. A student with a
distillation token (a distilled DeiT) is trained as DeiT trains it: its class head on the targets, its distillation
head on the teacher (`student_heads`); it predicts with the mean of the two. Any other student puts both terms on its
one head.
"""

import argparse

import torch
import torch.nn.functional as F

from ..hub.locating import locate_model
from ..image_processing_vit_reduced import Preprocessing, preprocessing_of
from .labels import match_labels

DISTILLATION_MODES = ("soft", "hard")


def add_distillation_arguments(group) -> None:
    group.add_argument(
        "--teacher_model_name_or_path",
        default=None,
        help="a folder or Hub id of a Transformers image classifier with the same labels",
    )
    group.add_argument("--teacher_revision", default=None, help="a teacher Hub id's branch, tag or commit (main)")
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


def student_heads(output, distiller) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits the run's targets train, logits the teacher trains): with a teacher, a distilled student's class and
    distillation heads (DeiT's recipe); otherwise its logits, for both."""
    if distiller is not None and getattr(output, "distillation_logits", None) is not None:
        return output.cls_logits, output.distillation_logits
    return output.logits, output.logits


class TeacherInput:
    """The student's normalized batch as the teacher's processor would have given it: back to [0, 1] with the
    student's mean and std, normalized with the teacher's, and resized (its interpolation, antialiased) to the
    teacher's size when that differs. The identity when both preprocess alike."""

    def __init__(self, student: Preprocessing, teacher: Preprocessing, *, device):
        def column(values):
            return torch.tensor(values, dtype=torch.float32, device=device).view(-1, 1, 1)

        # x_teacher = (x * std_s + mean_s - mean_t) / std_t = x * scale + shift
        self.scale = column(student.std) / column(teacher.std)
        self.shift = (column(student.mean) - column(teacher.mean)) / column(teacher.std)
        self.renormalizes = student.mean != teacher.mean or student.std != teacher.std
        self.size = teacher.image_size if teacher.image_size != student.image_size else None
        # torch's interpolate knows bilinear, bicubic and nearest; PIL's other filters are nearest to bicubic.
        mode = teacher.interpolation if teacher.interpolation in ("bilinear", "bicubic", "nearest") else "bicubic"
        self.mode = mode

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.renormalizes:
            images = images.float() * self.scale + self.shift
        if self.size is not None:
            images = F.interpolate(
                images.float(),
                size=(self.size, self.size),
                mode=self.mode,
                antialias=self.mode != "nearest",
                **({} if self.mode == "nearest" else {"align_corners": False}),
            )
        return images


class Distiller:
    """Adds the teacher's term to a training loss: `distiller(loss, student_logits, images)`."""

    def __init__(
        self,
        teacher: torch.nn.Module,
        *,
        mode: str,
        alpha: float,
        temperature: float,
        teacher_input=None,
        labels: dict | None = None,
        distillation_head: bool = False,
    ):
        if mode not in DISTILLATION_MODES:
            raise ValueError(f"distillation={mode!r} is not valid; allowed: 'soft', 'hard'")
        self.teacher = teacher.eval().requires_grad_(False)
        self.mode, self.alpha, self.temperature = mode, alpha, temperature
        self.teacher_input = teacher_input or (lambda images: images)
        self.labels = labels
        self.distillation_head = distillation_head  # the student's own head for the teacher (a distillation token)

    def __call__(self, loss: torch.Tensor, student_logits: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = self.teacher(pixel_values=self.teacher_input(images)).logits
        if self.mode == "soft":
            term = soft_distillation_loss(student_logits, teacher_logits, self.temperature)
        else:
            term = hard_distillation_loss(student_logits, teacher_logits)
        return (1 - self.alpha) * loss + self.alpha * term

    def describe(self) -> dict:
        """What the provenance records of this distillation."""
        return {
            "teacher": getattr(self.teacher, "name_or_path", None),
            **({"teacher_labels": self.labels} if self.labels and self.labels["labels"] != "same" else {}),
            "distillation": self.mode,
            "distillation_alpha": self.alpha,
            **({"distillation_temperature": self.temperature} if self.mode == "soft" else {}),
            **({"distillation_head": True} if self.distillation_head else {}),
        }


def load_teacher(
    name_or_path: str,
    *,
    label_names: list[str],
    preprocessing: Preprocessing,
    device,
    revision: str | None = None,
    token: str | None = None,
) -> tuple[torch.nn.Module, TeacherInput, dict]:
    """The teacher at `name_or_path` (a folder, or a Hub id at `revision` read with `token`), its labels put in the
    run's order, and how the student's batch becomes its input (from its saved image processor); and what its
    labels needed, for the provenance. Labels that are not the run's, or no image processor, are a ValueError in one
    line."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    flag = f"--teacher_model_name_or_path={name_or_path!r}"
    located = locate_model(name_or_path, revision=revision, token=token, flag="--teacher_model_name_or_path")
    try:
        teacher = AutoModelForImageClassification.from_pretrained(located.folder)
    except (OSError, ValueError) as error:
        raise ValueError(f"{flag} does not hold a saved image classifier: {str(error).splitlines()[0]}") from None
    teacher.name_or_path = located.describe()  # what from_pretrained records of a Hub id, with its commit
    labels = match_labels(teacher, label_names, flag=flag)
    try:
        processor = AutoImageProcessor.from_pretrained(located.folder)
    except (OSError, ValueError):
        raise ValueError(
            f"{flag} has no image processor (preprocessor_config.json): its normalization and size are unknown"
        ) from None
    own = preprocessing_of(processor, where=f"{flag}'s image processor")
    teacher_size = getattr(teacher.config, "image_size", own.image_size)
    if own.image_size != teacher_size:
        raise ValueError(
            f"{flag}'s image processor crops {own.image_size} px images; the teacher takes {teacher_size} px"
        )
    return (
        teacher.to(device).eval().requires_grad_(False),
        TeacherInput(preprocessing, own, device=device),
        labels.describe(),
    )
