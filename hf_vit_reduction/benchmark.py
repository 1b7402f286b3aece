"""`python -m hf_vit_reduction.benchmark`: the command lives in `hf_vit_reduction.study.benchmark`."""

from .study.benchmark import main

if __name__ == "__main__":
    main()
