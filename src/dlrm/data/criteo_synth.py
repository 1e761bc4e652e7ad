"""Write synthetic rows in the raw Criteo Kaggle format (``dlrm synth --format criteo-tsv``).

For benchmarking and testing the preprocessing pipeline at any size, with the features of real
data that a parser must handle: power-law (Zipf) ids per column rendered as 8 lowercase hex
digits, empty fields (integer and categorical), negative integers, log-normal counts, and ~25%
positive labels that depend on the features (so a model can learn something). Everything is
vectorized: numpy draws each chunk, pyarrow's C++ CSV writer renders it (millions of lines/s).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from dlrm.config import CRITEO_KAGGLE_TABLE_SIZES
from dlrm.data.criteo import DENSE_NAMES, NUM_DENSE, NUM_SPARSE, SPARSE_NAMES

_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def zipf_ranks(rng: np.random.Generator, size: int, vocab: int, exponent: float) -> np.ndarray:
    """``size`` ranks in [0, vocab) with P(rank r) roughly proportional to (r + 1) ** -exponent
    (inverse CDF of the continuous power law; exact Zipf is not needed here)."""
    u = rng.random(size)
    if abs(exponent - 1.0) < 1e-9:
        x = np.exp(u * np.log(vocab + 1.0))
    else:
        a = 1.0 - exponent
        x = (1.0 - u * (1.0 - (vocab + 1.0) ** a)) ** (1.0 / a)
    return np.minimum(np.floor(x).astype(np.int64) - 1, vocab - 1).clip(0)


def scramble_to_hex_value(ranks: np.ndarray, column: int) -> np.ndarray:
    """A bijection rank -> 32-bit value per column, so distinct ranks give distinct hex ids."""
    with np.errstate(over="ignore"):
        v = ranks.astype(np.uint32) * np.uint32(0x9E3779B1) + np.uint32(
            (column * 0x85EBCA6B) & 0xFFFFFFFF)
        v ^= v >> np.uint32(16)
        v *= np.uint32(0x7FEB352D)
        v ^= v >> np.uint32(15)
    return v


def hex8_array(values: np.ndarray, empty: np.ndarray) -> pa.Array:
    """uint32 values -> pyarrow binary array of 8 lowercase hex digits; ``empty`` -> null."""
    n = values.size
    shifts = np.arange(28, -1, -4, dtype=np.uint32)
    chars = _HEX_DIGITS[(values[:, None] >> shifts) & np.uint32(0xF)]
    offsets = np.arange(0, 8 * n + 1, 8, dtype=np.int32)
    validity = pa.py_buffer(np.packbits(~empty, bitorder="little"))
    return pa.Array.from_buffers(pa.binary(), n, [validity, pa.py_buffer(offsets),
                                                  pa.py_buffer(chars.tobytes())])


def write_criteo_tsv(path: str | Path, rows: int, seed: int = 0,
                     table_sizes: Sequence[int] = CRITEO_KAGGLE_TABLE_SIZES,
                     zipf: float = 1.1, empty_dense: float = 0.2, empty_sparse: float = 0.1,
                     negative_rate: float = 0.02, positive_rate: float = 0.25,
                     with_label: bool = True, chunk_rows: int = 250_000,
                     progress: Callable[[int, int], None] | None = None) -> dict[str, int]:
    """Write ``rows`` lines of Criteo Kaggle-format TSV to ``path``; returns counts.

    Args:
        table_sizes: distinct values per categorical column (26).
        zipf: power-law exponent of the ids.
        empty_dense / empty_sparse: probability that a field is empty.
        negative_rate: probability that an integer field holds a small negative number.
        positive_rate: approximate share of label 1.
        with_label: False writes the 39-field test format.
    """
    if len(table_sizes) != NUM_SPARSE:
        raise ValueError(f"{len(table_sizes)} table sizes; Criteo has {NUM_SPARSE} columns")
    rng = np.random.default_rng(seed)
    # Per-column log-normal scale and per-column id effects drive the click probability.
    dense_mu = rng.uniform(0.0, 4.0, NUM_DENSE)
    dense_sigma = rng.uniform(0.5, 2.0, NUM_DENSE)
    dense_weight = rng.normal(0.0, 0.15, NUM_DENSE)
    sparse_weight = rng.uniform(0.2, 0.8, NUM_SPARSE)
    base = np.log(positive_rate / (1 - positive_rate))
    written = positives = 0
    names = (["label"] if with_label else []) + DENSE_NAMES + SPARSE_NAMES
    options = pacsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
    with open(path, "wb") as sink:
        while written < rows:
            n = min(chunk_rows, rows - written)
            logit = np.full(n, base)
            columns: list[pa.Array] = []
            for k in range(NUM_DENSE):
                counts = np.floor(np.exp(rng.normal(dense_mu[k], dense_sigma[k], n)))
                counts = counts.astype(np.int64)
                negative = rng.random(n) < negative_rate
                counts[negative] = -rng.integers(1, 4, int(negative.sum()))
                logit += dense_weight[k] * (np.log1p(np.maximum(counts, 0)) - dense_mu[k])
                empty = rng.random(n) < empty_dense
                columns.append(pa.array(counts, mask=empty))
            for k in range(NUM_SPARSE):
                ranks = zipf_ranks(rng, n, int(table_sizes[k]), zipf)
                # A rank's effect on the click is a fixed pseudo-random number in [-1, 1).
                effect = (scramble_to_hex_value(ranks, 1000 + k) / 2.0**31) - 1.0
                logit += sparse_weight[k] * effect
                empty = rng.random(n) < empty_sparse
                columns.append(hex8_array(scramble_to_hex_value(ranks, k), empty))
            labels = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int8)
            positives += int(labels.sum())
            if with_label:
                columns.insert(0, pa.array(labels))
            pacsv.write_csv(pa.Table.from_arrays(columns, names=names), sink, options)
            written += n
            if progress:
                progress(written, rows)
    return {"rows": written, "positives": positives if with_label else 0}
