"""`python -m hf_vit_reduction.model_card`: the command lives in `hf_vit_reduction.hub.model_card`."""

from .hub.model_card import main

if __name__ == "__main__":
    main()
