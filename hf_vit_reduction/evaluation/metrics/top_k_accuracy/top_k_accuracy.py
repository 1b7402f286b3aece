"""Top-k accuracy for `evaluate`: each prediction is a list of class indices ranked by score, best first."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Fraction of examples whose label is the first prediction (top1) and among the first k predictions (top5, or topK
for other k). Predictions are the k highest-scoring class indices per example, e.g. `logits.topk(5).indices`.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[list[int]]`): ranked class indices per example, best first.
    references (`list[int]`): the true class of each example.
    k (`int`, defaults to 5): the second accuracy reported besides top-1.
Returns:
    top1 (`float`), top{k} (`float`) in [0, 1], and count (`int`): the number of examples.
Example:
    >>> metric = evaluate.load("hf_vit_reduction/evaluation/metrics/top_k_accuracy")
    >>> metric.compute(predictions=[[1, 0], [0, 1]], references=[1, 1], k=2)
    {'top1': 0.5, 'top2': 1.0, 'count': 2}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class TopKAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("int64")),
                    "references": datasets.Value("int64"),
                }
            ),
        )

    def _compute(self, predictions, references, k=5):
        ranked = np.asarray(predictions, dtype=np.int64).reshape(len(references), -1)
        references = np.asarray(references, dtype=np.int64)
        if ranked.shape[1] < k:
            raise ValueError(f"k={k} needs at least {k} ranked predictions per example, got {ranked.shape[1]}")
        hits = ranked[:, :k] == references[:, None]
        return {
            "top1": float(hits[:, 0].mean()),
            f"top{k}": float(hits.any(axis=1).mean()),
            "count": len(references),
        }
