"""``dlrm::dot_interaction``: DLRM's pairwise dot products as one operator.

Math, for x (B, D) and pooled embeddings e (B, F, D), T = [x, e_1, ..., e_F] (B, n, D) with
n = F + 1:

    out = [x, (T_i . T_j) for i in 1..n-1, j in 0..i-1]   (j <= i with self-interaction)

in the reference's row-by-row pair order (1,0), (2,0), (2,1), (3,0), ...; (B, D + P) with
P = n(n-1)/2 (n(n+1)/2 with self). It computes in ``dense.dtype`` (bf16 under autocast: the
vectors are rounded to bf16, products summed in float32); ``pooled`` may have any float dtype
and strides with a contiguous last dimension.

Backward (``dlrm::dot_interaction_backward``): with g_ij the gradient of pair (i, j), S is
the symmetric (B, n, n) matrix with S_ij = S_ji = g_ij (S_ii = 2 g_ii with self), and
dL/dT = S T: one product for the gradient of every vector.

Kernels: on CPU for float32/bfloat16 the native one-pass kernel (``dlrm.ops.native``); for
every other device and dtype a PyTorch implementation (one ``bmm`` for the Gram matrix, one
``gather`` of the pairs). Both return contiguous tensors, as the fake implementation says.
"""

from __future__ import annotations

import functools

import torch
from torch.utils.flop_counter import register_flop_formula

from dlrm.ops import native
from dlrm.ops.autograd import register_lean_autograd, register_no_second_derivative

_lib = torch.library.Library("dlrm", "FRAGMENT")
_lib.define("dot_interaction(Tensor dense, Tensor pooled, bool self_interaction) -> Tensor")
_lib.define("dot_interaction_backward(Tensor grad, Tensor dense, Tensor pooled, "
            "bool self_interaction) -> (Tensor, Tensor)")


def num_pairs(num_features: int, self_interaction: bool = False) -> int:
    """P, the pair count of F features and the dense vector (n = F + 1 vectors)."""
    n = num_features + 1
    return n * (n + 1) // 2 if self_interaction else n * (n - 1) // 2


@functools.lru_cache(maxsize=64)
def _pair_indices(n: int, self_interaction: bool, device: torch.device
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(flat positions of the pairs in the (n, n) Gram matrix, pair index of each of its n*n
    positions) for the PyTorch implementation. Without self-interaction the diagonal points at
    pair 0; the backward zeroes it after the gather."""
    rows, cols = torch.tril_indices(n, n, offset=0 if self_interaction else -1, device=device)
    pairs = torch.arange(rows.numel(), device=device)
    symmetric = torch.zeros(n * n, dtype=torch.int64, device=device)
    symmetric[rows * n + cols] = pairs
    symmetric[cols * n + rows] = pairs
    return rows * n + cols, symmetric


def _gather_columns(matrix: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``matrix[:, index]`` for a 2-D ``matrix``: (B, K) -> (B, len(index)).

    ``torch.gather`` with a broadcast index runs multi-threaded, where ``index_select`` along
    dim 1 runs on one thread. 2-byte floats move as int16 on CPU: a gather only copies bits,
    and the integer kernel is about twice as fast as the bfloat16 one.
    """
    wide = index.expand(matrix.shape[0], index.numel())
    if matrix.element_size() == 2 and matrix.is_floating_point() and not matrix.is_cuda:
        return torch.gather(matrix.view(torch.int16), 1, wide).view(matrix.dtype)
    return torch.gather(matrix, 1, wide)


def _vectors(dense: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """T = [x, e_1..e_F] (B, n, D) in dense's dtype: one strided copy that also casts."""
    batch, dim = dense.shape
    vectors = dense.new_empty(batch, pooled.shape[1] + 1, dim)
    vectors[:, 0] = dense
    vectors[:, 1:] = pooled
    return vectors


def _forward_torch(dense: torch.Tensor, pooled: torch.Tensor, self_interaction: bool
                   ) -> torch.Tensor:
    vectors = _vectors(dense, pooled)
    batch, n, _ = vectors.shape
    pair_index, _ = _pair_indices(n, self_interaction, dense.device)
    gram = torch.bmm(vectors, vectors.transpose(1, 2)).view(batch, n * n)
    return torch.cat([dense, _gather_columns(gram, pair_index)], dim=1)  # (B, D + P)


def _backward_torch(grad: torch.Tensor, dense: torch.Tensor, pooled: torch.Tensor,
                    self_interaction: bool) -> tuple[torch.Tensor, torch.Tensor]:
    vectors = _vectors(dense, pooled)
    batch, n, dim = vectors.shape
    _, symmetric_index = _pair_indices(n, self_interaction, dense.device)
    grad = grad.to(vectors.dtype)
    # S straight from grad's pair columns (they start at column D); the diagonal is 2 g_ii
    # with self-interaction, else zero.
    sym = _gather_columns(grad, symmetric_index + dim).view(batch, n, n)
    if self_interaction:
        sym.diagonal(dim1=1, dim2=2).mul_(2)
    else:
        sym.diagonal(dim1=1, dim2=2).zero_()
    grad_vectors = torch.bmm(sym, vectors)  # (B, n, D)
    grad_dense = grad_vectors[:, 0] + grad[:, :dim]
    return grad_dense, grad_vectors[:, 1:].to(pooled.dtype).contiguous()


def _forward_functional(dense: torch.Tensor, pooled: torch.Tensor, self_interaction: bool
                        ) -> torch.Tensor:
    """The forward with out-of-place ops only: what ``torch.export`` decomposes the operator
    into for serving artifacts (``export_decompositions``)."""
    vectors = torch.cat([dense.unsqueeze(1), pooled.to(dense.dtype)], dim=1)  # (B, n, D)
    batch, n, _ = vectors.shape
    rows, cols = torch.tril_indices(n, n, offset=0 if self_interaction else -1,
                                    device=dense.device)
    gram = torch.bmm(vectors, vectors.transpose(1, 2)).reshape(batch, n * n)
    pairs = torch.index_select(gram, 1, rows * n + cols)
    return torch.cat([dense, pairs], dim=1)


def _native_ok(dense: torch.Tensor, pooled: torch.Tensor) -> bool:
    return dense.dim() == 2 and pooled.dim() == 3 and native.takes(dense, pooled)


def _forward_cpu(dense: torch.Tensor, pooled: torch.Tensor, self_interaction: bool
                 ) -> torch.Tensor:
    if _native_ok(dense, pooled):
        return native.dot_forward(dense, pooled, self_interaction)
    return _forward_torch(dense, pooled, self_interaction)


def _backward_cpu(grad: torch.Tensor, dense: torch.Tensor, pooled: torch.Tensor,
                  self_interaction: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if _native_ok(dense, pooled):
        return native.dot_backward(grad, dense, pooled, self_interaction)
    return _backward_torch(grad, dense, pooled, self_interaction)


_lib.impl("dot_interaction", _forward_cpu, "CPU")
_lib.impl("dot_interaction", _forward_torch, "CompositeExplicitAutograd")
_lib.impl("dot_interaction_backward", _backward_cpu, "CPU")
_lib.impl("dot_interaction_backward", _backward_torch, "CompositeExplicitAutograd")


@torch.library.register_fake("dlrm::dot_interaction", lib=_lib)
def _forward_fake(dense, pooled, self_interaction):
    batch, dim = dense.shape
    return dense.new_empty(batch, dim + num_pairs(pooled.shape[1], self_interaction))


@torch.library.register_fake("dlrm::dot_interaction_backward", lib=_lib)
def _backward_fake(grad, dense, pooled, self_interaction):
    return torch.empty_like(dense, memory_format=torch.contiguous_format), \
        pooled.new_empty(pooled.shape)


def _setup_context(ctx, inputs, output) -> None:
    dense, pooled, self_interaction = inputs
    ctx.save_for_backward(dense, pooled)
    ctx.self_interaction = self_interaction


def _backward(ctx, grad):
    dense, pooled = ctx.saved_tensors
    grad_dense, grad_pooled = torch.ops.dlrm.dot_interaction_backward(
        grad, dense, pooled, ctx.self_interaction)
    return grad_dense, grad_pooled, None


register_no_second_derivative(_lib, "dot_interaction_backward",
                              "dlrm::dot_interaction has no second derivative: its backward "
                              "(dlrm::dot_interaction_backward) is not differentiable")
register_lean_autograd(_lib, "dot_interaction", _backward, _setup_context)


@register_flop_formula([torch.ops.dlrm.dot_interaction, torch.ops.dlrm.dot_interaction_backward])
def _flops(*shapes, out_shape=None, **_kwargs) -> int:
    """The Gram matrix's FLOPs (forward), or S T's (backward): 2 B n n D either way."""
    pooled_shape = [s for s in shapes if isinstance(s, (tuple, list, torch.Size))
                    and len(s) == 3][0]
    batch, features, dim = pooled_shape
    return 2 * batch * (features + 1) ** 2 * dim


def dot_interaction(dense: torch.Tensor, pooled: torch.Tensor, self_interaction: bool = False
                    ) -> torch.Tensor:
    """``(B, D), (B, F, D) -> (B, D + P)``; see the module doc."""
    return torch.ops.dlrm.dot_interaction(dense, pooled, self_interaction)
