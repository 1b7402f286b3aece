"""`python -m hf_vit_reduction.export`: the command lives in `hf_vit_reduction.conversion.export`."""

from .conversion.export import main

if __name__ == "__main__":
    main()
