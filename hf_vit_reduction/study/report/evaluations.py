"""`hf-vit-reduction evaluate`'s results files (--results_file, .json or .csv) read as rows of the report."""

import csv
import json
from pathlib import Path

from ...hub.run_folder import is_number

EVALUATION_FORMATS = (".json", ".csv")
REQUIRED = ("model", "top1", "top5", "agreement")
WHOLE_NUMBERS = ("images", "bad_images", "batch_size", "parameters", "mlp_parameters", "unique_mlps")
NUMBERS = (*WHOLE_NUMBERS, "top1", "top5", "loss", "agreement", "images_per_s", "gmacs", "expansion_ratio", "run_top1")


def is_evaluation_file(path) -> bool:
    path = Path(path)
    return path.is_file() and path.suffix.lower() in EVALUATION_FORMATS


def read_evaluation(path) -> list[dict]:
    """The rows of one results file, in its order, each naming the file; ValueError naming the file and the row."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        rows = (
            json.loads(text)
            if path.suffix.lower() == ".json"
            else [_numbers(row) for row in csv.DictReader(text.splitlines())]
        )
    except (UnicodeDecodeError, json.JSONDecodeError, csv.Error) as error:
        raise ValueError(f"evaluation results {str(path)!r} cannot be read ({error})") from None
    if not isinstance(rows, list) or not rows or not all(isinstance(row, dict) for row in rows):
        raise ValueError(
            f"evaluation results {str(path)!r} hold no rows; allowed: a --results_file of hf-vit-reduction evaluate"
        )
    for number, row in enumerate(rows, 1):
        missing = [key for key in REQUIRED if key not in row]
        if missing:
            raise ValueError(f"evaluation results {str(path)!r}: row {number} lacks {', '.join(missing)}")
        for key in REQUIRED[1:]:
            if not is_number(row[key]):
                raise ValueError(f"evaluation results {str(path)!r}: row {number}: {key}={row[key]!r} is not a number")
    return [row | {"results_file": str(path)} for row in rows]


def _numbers(row: dict) -> dict:
    """A CSV row as the JSON file holds it: figures as numbers, an empty cell as None."""
    converted = {key: None if value == "" else value for key, value in row.items()}
    for key in NUMBERS:
        if converted.get(key) is None:
            continue
        try:
            converted[key] = int(float(converted[key])) if key in WHOLE_NUMBERS else float(converted[key])
        except ValueError:
            pass  # left as text: the check of the required figures names it
    return converted
