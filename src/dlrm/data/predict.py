"""Score raw Criteo lines with a trained model (``dlrm predict``; usable by ``dlrm eval``).

A raw file in the Kaggle train (40 fields) or test (39 fields, no label) format is parsed and
mapped through the vocabulary of the folder the model was trained on, exactly as
preprocessing did, then scored in batches. The result has one probability per input line, in
order; a line that cannot be parsed gets NaN (so line ``i`` of the scores always belongs to
line ``i`` of the input) and is counted in the report, or with ``strict`` stops the run.

The scorer is the model itself (eager PyTorch) or any call with the serving signature
``(dense (B, 13), values (F*B,), offsets (F*B+1,)) -> probabilities (B,)``, such as an ONNX
Runtime session of the exported model (``dlrm.export.onnx_serving``, ``load_exported``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dlrm.data.loader import MemmapDataSource
from dlrm.data.pipeline.raw import RawRows
from dlrm.features import SparseFeatures
from dlrm.metrics import roc_auc

# A serving call: (dense (B, num_dense), values (N,), offsets (F*B+1,)) -> probabilities (B,)
Scorer = torch.nn.Module | Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Scores:
    """Per input line: ``probabilities`` (NaN for skipped lines) and ``labels`` (-1 where a
    line was skipped; None for unlabeled input); ``report`` counts rows and skips."""

    probabilities: np.ndarray
    labels: np.ndarray | None
    report: dict[str, Any]


@torch.no_grad()
def score_rows(model: Scorer, rows: RawRows, batch_size: int = 65536) -> np.ndarray:
    """Click probabilities for parsed rows: ``sigmoid(model(dense, one-hot ids))`` for a
    model (``nn.Module``), ``model(dense, values, offsets)`` for a serving call."""
    out = np.empty(rows.dense.shape[0], dtype=np.float64)
    eager = isinstance(model, torch.nn.Module)
    device = next((p.device for p in model.parameters()), torch.device("cpu")) if eager \
        else torch.device("cpu")
    for start in range(0, out.size, batch_size):
        stop = min(start + batch_size, out.size)
        dense = torch.from_numpy(np.ascontiguousarray(rows.dense[start:stop])).to(device)
        ids = torch.from_numpy(np.ascontiguousarray(rows.ids[start:stop])).to(device)
        sparse = SparseFeatures.from_ids(ids)
        if eager:
            probabilities = torch.sigmoid(model(dense, sparse).float())
        else:
            probabilities = model(dense, sparse.values, sparse.offsets)
        out[start:stop] = probabilities.cpu().numpy()
    return out


def score_raw_file(model: Scorer, source: MemmapDataSource, path: str | Path,
                   batch_size: int = 65536, strict: bool = False) -> Scores:
    """Parse ``path`` with ``source``'s vocabulary and score every line (see module doc)."""
    rows = source.encode_raw_file(path, strict=strict)
    probabilities = np.full(rows.lines_read, np.nan)
    index = rows.line_numbers - 1
    probabilities[index] = score_rows(model, rows, batch_size)
    labels = None
    report = dict(rows.report)
    if rows.labels is not None:
        labels = np.full(rows.lines_read, -1, dtype=np.int8)
        labels[index] = rows.labels
        report["auc"] = roc_auc(torch.from_numpy(probabilities[index]),
                                torch.from_numpy(rows.labels))
        report["positives"] = int(rows.labels.sum())
    return Scores(probabilities, labels, report)


def write_scores(path: str | Path, probabilities: np.ndarray) -> None:
    """One probability per line (``%.6f``; ``nan`` for lines that could not be parsed)."""
    with open(path, "w") as f:
        f.write("\n".join(f"{p:.6f}" for p in probabilities.tolist()))
        if probabilities.size:
            f.write("\n")
