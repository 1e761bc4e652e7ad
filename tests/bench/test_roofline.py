"""FLOP and byte counts of each component against hand computations for a tiny config, and
the matmul FLOPs against torch's own FLOP counter."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from dlrm.bench.roofline import Cost, analyze, component_costs
from dlrm.config import DLRMConfig
from dlrm.models.dlrm import DLRM

# tiny: B=4, F=8 tables, D=8, bottom 13-32-8, top (8+36)-32-16-1 ... here top 44-16-1.
BOTTOM, TOP, D, B, F = [13, 32, 8], [44, 16, 1], 8, 4, 8


def costs(bags=None, precision="fp32", dense_params=100, mode="train"):
    return component_costs(BOTTOM, TOP, D, bags or [1] * F, B, precision, "dot", False, mode,
                           dense_params)


def test_bottom_mlp_by_hand():
    c = costs()
    # fwd 13->32: 2*4*13*32 + 4*32 = 3456; 32->8: 2*4*32*8 + 4*8 = 2080
    assert c["bottom_mlp_fwd"].flops == 3456 + 2080
    # bytes 4*(4*13 + 13*32 + 32 + 4*32) = 2512; 4*(4*32 + 32*8 + 8 + 4*8) = 1696
    assert c["bottom_mlp_fwd"].bytes == 2512 + 1696
    # bwd 13->32 (no input grad: dense input is a leaf): 3328 + 128; bytes 4*596 + 4*448
    # bwd 32->8 with input grad: 2048 + 32 + 2048; bytes 4*416 + 4*264 + 4*4*32
    assert c["bottom_mlp_bwd"].flops == 3456 + 4128
    assert c["bottom_mlp_bwd"].bytes == 4176 + 3232
    assert costs(precision="bf16")["bottom_mlp_fwd"].bytes == 2 * (628 + 424)


def test_embedding_and_update_by_hand():
    c = costs()
    # one-hot, N = 32 ids: no adds; rows 4*32*8 + ids 8*32 + pooled 4*4*8*8
    assert (c["embedding_fwd"].flops, c["embedding_fwd"].bytes) == (0, 1024 + 256 + 1024)
    assert c["embedding_fwd"].memory == "gather"
    # The backward: pooled gradients per id (one-hot: read and laid out, 2*4*4*8*8), then the
    # fused SGD row update: 2 N D FLOPs; grad rows + rows read and written + ids (3072 + 256).
    assert (c["embedding_bwd"].flops, c["embedding_bwd"].bytes) == (512,
                                                                     2 * 4 * 4 * 8 * 8 + 3328)
    assert c["embedding_bwd"].memory == "gather" and "embedding_update" not in c
    m = costs(bags=[2] * F)  # multi-hot, N = 64: (64 - 32) * 8 adds
    assert (m["embedding_fwd"].flops, m["embedding_fwd"].bytes) == (256, 2048 + 512 + 1024)
    assert m["embedding_bwd"].bytes == (4 * 32 * 8 + 4 * 64 * 8 + 8 * 64) + 3 * 4 * 64 * 8 + 8 * 64


def test_interaction_loss_optimizer_by_hand():
    c = costs()
    # n = 9 vectors, P = 36 pairs: fwd 2*4*81*8; bytes 4*(4*9*8 + 4*44)
    assert (c["interaction_fwd"].flops, c["interaction_fwd"].bytes) == (5184, 1856)
    # bwd: one bmm S T (2*4*81*8); bytes 4*(4*44 + 4*81 + 2*4*9*8) with S (B, n, n)
    assert (c["interaction_bwd"].flops, c["interaction_bwd"].bytes) == (5184, 4304)
    assert (c["dense_optimizer"].flops, c["dense_optimizer"].bytes) == (200, 1200)
    assert (c["loss_fwd"].flops, c["loss_bwd"].bytes) == (20, 48)
    assert set(costs(mode="infer")) == {"bottom_mlp_fwd", "embedding_fwd", "interaction_fwd",
                                        "top_mlp_fwd"}


def test_matmul_flops_match_torch_flop_counter():
    """Our counts minus bias adds and pooling equal what torch counts for mm/bmm."""
    torch.manual_seed(0)
    cfg = DLRMConfig(table_sizes=[50] * F, embedding_dim=D, bottom_mlp=BOTTOM,
                     top_mlp=TOP[1:])
    model = DLRM(cfg, check_inputs=False)
    dense = torch.randn(B, 13)
    pooled = torch.randn(B, F, D, requires_grad=True)
    c = costs()
    bias = {"bottom": B * (32 + 8), "top": B * (16 + 1)}
    with FlopCounterMode(display=False) as counter:
        x = model.bottom_mlp(dense)
    assert counter.get_total_flops() == c["bottom_mlp_fwd"].flops - bias["bottom"]
    x_leaf = x.detach().requires_grad_()
    # The dlrm operators register their FLOP formulas: the counter sees the native kernels.
    with FlopCounterMode(display=False) as counter:
        z = model.interaction(x_leaf, pooled)
    assert counter.get_total_flops() == c["interaction_fwd"].flops
    with FlopCounterMode(display=False) as counter:
        z.sum().backward()
    assert counter.get_total_flops() == c["interaction_bwd"].flops
    z_leaf = z.detach().requires_grad_()
    with FlopCounterMode(display=False) as counter:
        out = model.top_mlp(z_leaf)
    assert counter.get_total_flops() == c["top_mlp_fwd"].flops - bias["top"]
    with FlopCounterMode(display=False) as counter:
        out.sum().backward()
    assert counter.get_total_flops() == c["top_mlp_bwd"].flops - bias["top"]
    with FlopCounterMode(display=False) as counter:
        x.sum().backward()
    assert counter.get_total_flops() == c["bottom_mlp_bwd"].flops - bias["bottom"]


def test_analyze_bound_and_fraction():
    ceilings = {"matmul_fp32_gflops": 1.0, "stream_gbps": 1.0, "gather_gbps": 0.5}
    out = analyze({"a": Cost(2e6, 1e6, "stream"), "b": Cost(0, 1e6, "gather")},
                  {"a": 4.0, "b": 4.0}, ceilings, "fp32")
    # a: compute 2 ms > memory 1 ms -> compute-bound, ideal 2 ms of 4 ms measured
    assert out["a"]["bound"] == "compute"
    assert out["a"]["ideal_ms"] == pytest.approx(2.0)
    assert out["a"]["fraction_of_bound"] == pytest.approx(0.5)
    assert out["a"]["achieved_gflops"] == pytest.approx(0.5)
    # b: 1e6 bytes at 0.5 GB/s = 2 ms
    assert out["b"]["bound"] == "memory (gather)"
    assert out["b"]["fraction_of_bound"] == pytest.approx(0.5)


def test_dcnv2_cross_interaction_flops_match_torch_flop_counter():
    """DLRM-DCNv2's low-rank cross layers: 4 B k r FLOPs forward and 8 B k r backward each,
    plus element-wise terms that torch's counter leaves out."""
    from dlrm.models.interactions import CrossInteraction

    layers, rank = 2, 4
    k = (F + 1) * D
    c = component_costs(BOTTOM, [k, *TOP[1:]], D, [1] * F, B, interaction="cross",
                        cross_layers=layers, cross_rank=rank)
    module = CrossInteraction(F, D, layers, rank)
    x = torch.randn(B, D, requires_grad=True)
    pooled = torch.randn(B, F, D, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        out = module(x, pooled)
    assert counter.get_total_flops() == c["interaction_fwd"].flops - layers * 3 * B * k
    with FlopCounterMode(display=False) as counter:
        out.sum().backward()
    assert counter.get_total_flops() == c["interaction_bwd"].flops - layers * 5 * B * k
