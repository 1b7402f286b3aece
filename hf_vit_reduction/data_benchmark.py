"""`python -m hf_vit_reduction.data_benchmark`: the command lives in `hf_vit_reduction.study.data_benchmark`."""

from .study.data_benchmark import main

if __name__ == "__main__":
    main()
