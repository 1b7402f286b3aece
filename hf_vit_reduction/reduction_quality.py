"""`python -m hf_vit_reduction.reduction_quality`: the command lives in `hf_vit_reduction.study.reduction_quality`."""

from .study.reduction_quality import main

if __name__ == "__main__":
    main()
