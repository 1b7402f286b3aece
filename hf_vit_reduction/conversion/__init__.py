"""Bring pretrained ViTs into ViTReduced, and reduce a baseline after training.

`from_transformers` and `from_timm` give a baseline `ViTReducedForImageClassification` whose logits equal the
source's; `reduce` turns a baseline into `shallow` (prune each MLP's hidden units) or `grouped` (one MLP per group of
blocks). `hf-vit-reduction convert` does the same from the command line and writes a model folder.
"""

from .post_hoc import reduce
from .timm_vit import from_timm
from .transformers_vit import from_transformers

__all__ = ["from_timm", "from_transformers", "reduce"]
