"""`python -m hf_vit_reduction <command>`, the same as `hf-vit-reduction <command>`."""

from .cli import main

main()
