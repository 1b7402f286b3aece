"""A model holding given weights exactly, for the converters."""

import torch


def build_with_weights(model_class, config, state_dict: dict, training: bool = False):
    """A model of `model_class` holding exactly `state_dict`, without spending time (or the RNG) on an init."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = model_class(config)
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model.train(training)
