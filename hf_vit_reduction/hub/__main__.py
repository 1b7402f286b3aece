"""`python -m hf_vit_reduction.hub`: push a saved model folder to the Hub."""

from .pushing import main

main()
