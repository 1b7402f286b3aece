"""Scoring any image classifier through its own preprocessing: `evaluate` and `predict`, and training's validation.

`scoring` holds the loop that training validates with and `evaluate` scores with; `sources` turns what a user names
(a run or model folder, a Hub id, a timm model) into a classifier and its preprocessing.
"""
