"""`python -m hf_vit_reduction.convert`: the command lives in `hf_vit_reduction.conversion.convert`."""

from .conversion.convert import main

if __name__ == "__main__":
    main()
