"""The training engine: the run configuration, recipe, data and loaders, state, checkpoints, evaluation and outputs.
Needs the `train` extra (`hf-vit-reduction train` says so in one line when it is missing)."""
