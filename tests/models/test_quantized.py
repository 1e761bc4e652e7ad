"""Row-wise int8 / 4-bit embeddings against a naive per-element quantizer; int8 MLPs against
their math in float64 and against the float model."""

import copy

import pytest
import torch

from dlrm.config import preset
from dlrm.features import SparseFeatures
from dlrm.models.dlrm import DLRM
from dlrm.models.embeddings import FusedEmbeddingBag
from dlrm.models.quantized import (
    Int8Linear,
    QuantizedEmbeddingBag,
    QuantizedMLP,
    activation_qparams,
    calibrate_mlp_ranges,
    dequantize_rows,
    embedding_bytes,
    quantize_model,
    quantize_rows,
)
from dlrm.ops.quantize import _quantize_torch, quantize_u8


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


# ------------------------------------------------------------------- int8 MLPs
def test_int8_linear_is_its_math_in_float64():
    """The kernel's output codes are those of the layer's math on the dequantized operands,
    in float64, requantized: within one code (the kernel rounds once in int32 arithmetic)."""
    gen = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(37, 24)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(24, 37, generator=gen) * 0.3)
        linear.bias.copy_(torch.randn(24, generator=gen) * 0.1)
    x = torch.rand(64, 37, generator=gen) * 2 - 0.5
    for relu in (True, False):
        layer = Int8Linear.from_float(linear, relu, (-3.0, 3.0))
        in_scale, in_zero = activation_qparams(-0.5, 1.5)
        xq = quantize_u8(x, in_scale, in_zero)
        got = layer(xq, in_scale, in_zero).long()
        x_hat = (xq.double() - in_zero) * in_scale
        w_hat = layer.weight.double() * layer.weight_scale.double()[:, None]
        y = x_hat @ w_hat.T + layer.bias.double()
        if relu:
            y = y.clamp_min(0)
        want = (torch.round(y / float(layer.out_scale)) + int(layer.out_zero_point)).clamp(0, 255)
        assert (got - want.long()).abs().max() <= 1
        assert (got == want.long()).double().mean() > 0.95
        # The float32 output (an MLP's last hidden layer): the same math, not requantized.
        floats = layer(xq, in_scale, in_zero, float_output=True)
        assert floats.dtype == torch.float32
        assert torch.allclose(floats.double(), y, atol=1e-4, rtol=1e-4)
        # The weights: symmetric per output row, the largest entry of each row at +-127.
        assert layer.weight.abs().amax(1).tolist() == [127] * 24


def test_quantized_mlp_calibrates_on_the_model_and_stays_close_to_float():
    cfg = preset("tiny")
    model = DLRM(cfg).eval()
    gen = torch.Generator().manual_seed(1)

    def batch(n):
        dense = torch.rand(n, cfg.num_dense, generator=gen) * 4
        ids = torch.stack([torch.randint(0, size, (n,), generator=gen)
                           for size in cfg.table_sizes], 1)
        return type("B", (), {"dense": dense, "sparse": SparseFeatures.from_ids(ids)})()

    calibration = [batch(512) for _ in range(4)]
    ranges = calibrate_mlp_ranges(model, calibration)
    assert set(ranges) == {"bottom_mlp", "top_mlp"}
    assert len(ranges["bottom_mlp"]) == len(model.bottom_mlp.linears())
    assert ranges["bottom_mlp"][0][0] >= 0 and ranges["bottom_mlp"][1][0] == 0  # after ReLU
    test = batch(2048)
    with torch.no_grad():
        want = model(test.dense, test.sparse)
        quantized = quantize_model(copy.deepcopy(model), 8, mlp="int8", mlp_ranges=ranges)
        assert isinstance(quantized.bottom_mlp, QuantizedMLP)
        assert all(isinstance(m, Int8Linear) for m in quantized.top_mlp.hidden)
        got = quantized(test.dense, test.sparse)
    # int8 activations and weights, and 8-bit tables: close to the float logits (a test row
    # beyond the calibrated ranges is clipped, so the bound is on the mean and the order).
    assert (got - want).abs().mean() < 0.05 * want.std()
    assert torch.corrcoef(torch.stack([got, want]))[0, 1] > 0.995
    # A checkpoint's state dict loads into the empty structure and gives the same outputs.
    empty = quantize_model(DLRM(cfg), 8, empty=True, mlp="int8")
    empty.load_state_dict(quantized.state_dict())
    with torch.no_grad():
        assert torch.equal(empty.eval()(test.dense, test.sparse), got)
    layers = len(model.bottom_mlp.linears())
    with pytest.raises(ValueError, match=f"needs {layers} ranges"):
        QuantizedMLP.from_float(model.bottom_mlp, ranges["bottom_mlp"][:-1])


def test_uint8_codes_are_the_quantization_math_in_both_kernels():
    """``dlrm::quantize_u8``: the native kernel and the PyTorch one agree to the bit (float32
    and bfloat16 input, strided rows); both are round-half-even of x / scale in float64 up to
    the float32 product's rounding, plus the zero point, clipped to 0..255."""
    from dlrm.ops import native

    gen = torch.Generator().manual_seed(3)
    x = torch.randn(300, 70, generator=gen) * 3
    x[0, :4] = torch.tensor([1e9, -1e9, 0.0, 0.5 * 0.02])  # clipped high, low; 0; a half
    for scale, zero in ((0.02, 128), (0.05, 0), (0.011, 255)):
        want64 = (torch.round(x.double() / scale) + zero).clamp(0, 255)
        torch_codes = _quantize_torch(x, scale, zero)
        assert (torch_codes.long() - want64.long()).abs().max() <= 1
        assert (torch_codes.long() == want64.long()).double().mean() > 0.999
        if native.available():
            for view in (x, x.bfloat16(), torch.cat([x, x], 1)[:, :70]):
                assert torch.equal(quantize_u8(view, scale, zero), _quantize_torch(view, scale,
                                                                                  zero))
        assert torch.equal(quantize_u8(x, scale, zero), torch_codes)
    assert quantize_u8(x, 0.02, 128)[0, :3].tolist() == [255, 0, 128]
    torch.library.opcheck(torch.ops.dlrm.quantize_u8.default, (x, 0.02, 128))
    with pytest.raises(ValueError, match="zero point in 0..255"):
        quantize_u8(x, 0.02, 300)


def test_int8_mlps_are_refused_up_front_where_the_build_lacks_the_kernel(monkeypatch):
    import dlrm.models.quantized as quantized

    monkeypatch.setattr(quantized, "int8_kernels_available", lambda: False)
    with pytest.raises(ValueError, match="leave out --mlp"):
        quantize_model(DLRM(preset("tiny")), 8, empty=True, mlp="int8")
