"""`python -m hf_vit_reduction.reproduce`: the command lives in `hf_vit_reduction.study.reproduce`."""

from .study.reproduce import main

if __name__ == "__main__":
    main()
