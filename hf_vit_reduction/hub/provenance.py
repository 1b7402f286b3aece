"""How a cut or recovered model was made, saved beside its weights as `provenance.json`.

The converter writes the cut (source, strategy, method, calibration); a training run that starts from such a model
adds its recovery (teacher, distillation, epochs, top-1 before and after), keeping the cut's record under `cut`.
"""

import json
from pathlib import Path

from .locating import LocatedModel

PROVENANCE_FILE = "provenance.json"


def write_provenance(folder: str | Path, provenance: dict) -> Path:
    path = Path(folder) / PROVENANCE_FILE
    path.write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
    return path


def read_provenance(folder: str | Path) -> dict | None:
    """The record in a local model folder, or None (a Hub id or a model made some other way)."""
    path = Path(folder) / PROVENANCE_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def recovery_provenance(
    *,
    start: LocatedModel,
    distillation: dict | None,
    epochs: int,
    top1_before: float,
    top1_after: float,
    labels: dict,
    preprocessing: dict,
) -> dict:
    """The record of a training run that started from the saved model `start` (a folder, or a Hub id with its
    commit): the cut (its own record, when the converter wrote one), the distillation (None without a teacher), the epochs trained and top-1 (%) before and
    after, both measured on the run's validation split as the run reports it; how the model's labels were matched
    to the data's (`labels.LabelMatch.describe`: the same, permuted, or a new head) and where each preprocessing
    value came from (the starting model, a flag)."""
    return {
        "cut": read_provenance(start.folder),
        "recovered_from": start.describe(),
        "distillation": distillation,
        "recovery_epochs": epochs,
        "top1_before": top1_before,
        "top1_after": top1_after,
        "labels": labels,
        "preprocessing": preprocessing,
    }
