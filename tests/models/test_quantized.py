"""Row-wise int8 / 4-bit embeddings against a naive per-element quantizer."""

import pytest
import torch

from dlrm.config import preset
from dlrm.features import SparseFeatures
from dlrm.models.dlrm import DLRM
from dlrm.models.embeddings import FusedEmbeddingBag
from dlrm.models.quantized import (
    QuantizedEmbeddingBag,
    dequantize_rows,
    embedding_bytes,
    quantize_model,
    quantize_rows,
)


def naive_quantize_row(row, bits):
    """Per element: codes in 0..2^b-1 against the stored (rounded) scale and bias."""
    dtype = torch.float32 if bits == 8 else torch.float16
    lo, hi = row.min(), row.max()  # float32 scalars, the stored precision
    bias = float(lo.to(dtype))
    scale = float(((hi - lo) / (2 ** bits - 1)).to(dtype))
    codes = [min(2 ** bits - 1, max(0, round((float(w) - bias) / scale))) if scale else 0
             for w in row]
    return codes, scale, bias


@pytest.mark.parametrize("bits", [8, 4])
def test_quantize_rows_matches_naive(bits):
    weight = torch.randn(20, 7)  # odd D: the 4-bit packing pads one nibble
    weight[3] = 0.5  # a constant row: scale 0, dequantizes exactly
    codes, scale, bias = quantize_rows(weight, bits)
    assert codes.dtype == torch.uint8
    assert codes.shape == (20, 7 if bits == 8 else 4)
    for r in range(20):
        expected, s, b = naive_quantize_row(weight[r], bits)
        packed = codes[r].tolist()
        got = packed if bits == 8 else [n for byte in packed for n in (byte & 15, byte >> 4)][:7]
        assert got == expected, r
        assert float(scale[r]) == s and float(bias[r]) == b
    restored = dequantize_rows(codes, scale, bias, bits, 7)
    bound = scale.float()[:, None] / 2 + 1e-6
    assert bool(((restored - weight).abs() <= bound).all())
    assert torch.equal(restored[3], weight[3])


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("one_hot", [True, False])
def test_quantized_lookup_matches_dequantized_tables(bits, one_hot):
    torch.manual_seed(0)
    fused = FusedEmbeddingBag([30, 5, 100], 6)
    q = QuantizedEmbeddingBag.from_float(fused, bits)
    weight = q.dequantized_weight().double()
    gen = torch.Generator().manual_seed(1)
    if one_hot:
        sparse = SparseFeatures.from_ids(torch.stack(
            [torch.randint(0, n, (9,), generator=gen) for n in (30, 5, 100)], 1))
    else:
        lengths = torch.randint(0, 4, (27,), generator=gen)
        values = torch.cat([torch.randint(0, n, (int(lengths[f * 9:(f + 1) * 9].sum()),),
                                          generator=gen) for f, n in enumerate((30, 5, 100))])
        sparse = SparseFeatures.from_lengths(values, lengths, 3)
    out = q(sparse)
    offsets, values = sparse.offsets.tolist(), sparse.values.tolist()
    table_start = [0, 30, 35]
    expected = torch.zeros(9, 3, 6, dtype=torch.float64)
    for f in range(3):
        for b in range(9):
            for i in values[offsets[f * 9 + b]: offsets[f * 9 + b + 1]]:
                expected[b, f] += weight[table_start[f] + i]
    torch.testing.assert_close(out.double(), expected, rtol=1e-6, atol=1e-6)
    # And close to the float tables (entries off by <= scale/2).
    torch.testing.assert_close(out, fused(sparse), atol=0.5 if bits == 4 else 0.05, rtol=0)


def test_quantized_model_memory_and_outputs():
    torch.manual_seed(0)
    model = DLRM(preset("tiny", table_sizes=[5000, 3000, 200]), check_inputs=True).eval()
    ids = torch.stack([torch.randint(0, n, (64,)) for n in (5000, 3000, 200)], 1)
    dense = torch.rand(64, 13)
    with torch.no_grad():
        ref = torch.sigmoid(model(dense, SparseFeatures.from_ids(ids)))
        float_bytes = embedding_bytes(model)
        assert float_bytes == 8200 * 8 * 4
        for bits, per_row in ((8, 8 + 8), (4, 4 + 4)):  # codes + scale + bias bytes per row
            q = quantize_model(DLRM(model.config), bits)
            q.load_state_dict(quantize_model(model_copy(model), bits).state_dict())
            assert embedding_bytes(q) == 8200 * per_row
            out = torch.sigmoid(q(dense, SparseFeatures.from_ids(ids)))
            assert (out - ref).abs().max() < (0.002 if bits == 8 else 0.03)


def model_copy(model):
    clone = DLRM(model.config)
    clone.load_state_dict(model.state_dict())
    return clone.eval()
