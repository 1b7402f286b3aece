"""The training engine behind `run_image_classification.py`: recipe, data and loaders, state, checkpoints,
evaluation and outputs. Needs the `train` extra."""

from ..command_line import require_extra

require_extra("train", command="training (run_image_classification.py)")
