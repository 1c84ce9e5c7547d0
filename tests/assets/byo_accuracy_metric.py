"""A stand-in for the `accuracy` metric script, so `evaluate.load("accuracy")` can be tested offline.

tests/test_byo_script.py copies it to VOLUME/accuracy/accuracy.py: evaluate then loads the
metric from that folder in the working directory (/volume) instead of the Hub. Users put
the real metric's script there (docs/bring-your-own-script.md, "Metrics offline").
"""

from __future__ import annotations

import datasets
import evaluate


class Accuracy(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="fraction of predictions equal to their references",
            citation="",
            inputs_description="predictions, references: lists of class ids",
            features=datasets.Features(
                {"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}
            ),
        )

    def _compute(self, predictions, references) -> dict[str, float]:
        right = sum(int(p == r) for p, r in zip(predictions, references, strict=True))
        return {"accuracy": right / len(references)}
