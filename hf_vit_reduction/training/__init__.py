"""The training engine behind `run_image_classification.py`: recipe, data and loaders, state, checkpoints,
evaluation and outputs."""
