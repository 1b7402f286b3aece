"""`python -m hf_vit_reduction.report`: the command lives in `hf_vit_reduction.study.report`."""

from .study.report import main

if __name__ == "__main__":
    main()
