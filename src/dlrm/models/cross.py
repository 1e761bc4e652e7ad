"""Cross networks: DCN's vector cross layers and DCN-v2's matrix (full or low-rank) ones."""

from __future__ import annotations

import math

import torch
from torch import nn


class CrossNet(nn.Module):
    """DCN cross network (Wang et al. 2017, "Deep & Cross Network for Ad Click Predictions",
    arXiv:1708.05123, eq. 3).

    Math, for x_0 (B, d) and layers l = 0..L-1 with vectors w_l, b_l (d,):
        x_{l+1} = x_0 * (x_l . w_l) + b_l + x_l
    Each layer adds 2d parameters; the output is x_L (B, d).

    Args:
        width: d.
        num_layers: L.

    Call: ``(B, d) -> (B, d)``.

    Example:
        >>> CrossNet(30, 6)(torch.randn(4, 30)).shape
        torch.Size([4, 30])
    """

    def __init__(self, width: int, num_layers: int) -> None:
        super().__init__()
        bound = math.sqrt(1.0 / width)
        self.weights = nn.Parameter(torch.empty(num_layers, width).uniform_(-bound, bound))
        self.biases = nn.Parameter(torch.zeros(num_layers, width))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for w, b in zip(self.weights, self.biases):
            x = x0 * (x @ w).unsqueeze(1) + b + x  # (B, d)
        return x


class CrossNetV2(nn.Module):
    """DCN-v2 cross network (Wang et al. 2020, "DCN V2: Improved Deep & Cross Network and
    Practical Lessons for Web-scale Learning to Rank Systems", arXiv:2008.13535, eq. 1).

    Math, for x_0 (B, d) and layers l = 0..L-1:
        x_{l+1} = x_0 * (W_l x_l + b_l) + x_l        (* is element-wise)
    with W_l a full (d, d) matrix, or low-rank W_l = U_l V_l^T with U_l, V_l (d, r), which
    costs 2dr instead of d^2 parameters (the paper's "DCN-Mix" without the mixture).

    Args:
        width: d.
        num_layers: L.
        low_rank: r, or None for full-rank W_l.

    Call: ``(B, d) -> (B, d)``.

    Example:
        >>> CrossNetV2(30, 3, low_rank=8)(torch.randn(4, 30)).shape
        torch.Size([4, 30])
    """

    def __init__(self, width: int, num_layers: int, low_rank: int | None = None) -> None:
        super().__init__()
        self.low_rank = low_rank
        if low_rank is None:
            self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(num_layers))
        else:
            if low_rank <= 0:
                raise ValueError(f"low_rank {low_rank}: must be positive")
            self.down = nn.ModuleList(nn.Linear(width, low_rank, bias=False)
                                      for _ in range(num_layers))  # V_l^T
            self.layers = nn.ModuleList(nn.Linear(low_rank, width) for _ in range(num_layers))
        for linear in self.modules():
            if isinstance(linear, nn.Linear):
                nn.init.xavier_normal_(linear.weight)
                if linear.bias is not None:
                    nn.init.zeros_(linear.bias)

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for l, up in enumerate(self.layers):
            h = x if self.low_rank is None else self.down[l](x)  # (B, r) = V^T x
            x = x0 * up(h) + x  # (B, d)
        return x
