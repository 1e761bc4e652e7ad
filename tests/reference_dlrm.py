"""A naive re-implementation of the original facebookresearch/dlrm model (dlrm_s_pytorch.py):
per-table nn.EmbeddingBag list ``emb_l``, ``bot_l`` / ``top_l`` nn.Sequential stacks, the
interaction as its explicit li/lj index lists, a sigmoid at the end. Tests use it as the
reference for checkpoints, forward outputs and one SGD step."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def make_stack(widths: list[int], sigmoid_last: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (n, m) in enumerate(zip(widths[:-1], widths[1:])):
        linear = nn.Linear(n, m, bias=True)
        mean, std_dev = 0.0, np.sqrt(2 / (m + n))
        linear.weight.data = torch.tensor(np.random.normal(mean, std_dev, size=(m, n)),
                                          dtype=torch.float32)
        linear.bias.data = torch.tensor(np.random.normal(mean, np.sqrt(1 / m), size=m),
                                        dtype=torch.float32)
        layers.append(linear)
        layers.append(nn.Sigmoid() if sigmoid_last and i == len(widths) - 2 else nn.ReLU())
    return nn.Sequential(*layers)


class ReferenceDLRM(nn.Module):
    def __init__(self, table_sizes, dim, bottom, top, self_interaction=False):
        super().__init__()
        self.emb_l = nn.ModuleList()
        for n in table_sizes:
            bag = nn.EmbeddingBag(n, dim, mode="sum", sparse=True)
            bag.weight.data = torch.tensor(
                np.random.uniform(-np.sqrt(1 / n), np.sqrt(1 / n), size=(n, dim)),
                dtype=torch.float32)
            self.emb_l.append(bag)
        self.bot_l = make_stack(bottom, sigmoid_last=False)
        self.top_l = make_stack(top, sigmoid_last=True)
        self.self_interaction = self_interaction

    def forward(self, dense_x, lS_o, lS_i):
        x = self.bot_l(dense_x)
        ly = [self.emb_l[k](lS_i[k], lS_o[k]) for k in range(len(self.emb_l))]
        batch, dim = x.shape
        T = torch.cat([x] + ly, dim=1).view((batch, -1, dim))
        Z = torch.bmm(T, torch.transpose(T, 1, 2))
        _, ni, nj = Z.shape
        offset = 1 if self.self_interaction else 0
        li = torch.tensor([i for i in range(ni) for j in range(i + offset)])
        lj = torch.tensor([j for i in range(nj) for j in range(i + offset)])
        R = torch.cat([x, Z[:, li, lj]], dim=1)
        return self.top_l(R)


def random_reference_batch(table_sizes, batch, num_dense, seed, max_bag=3):
    """dense (B, num_dense), lS_o list of (B,) offsets, lS_i list of ids (multi-hot bags)."""
    gen = torch.Generator().manual_seed(seed)
    dense = torch.rand(batch, num_dense, generator=gen)
    lS_o, lS_i = [], []
    for n in table_sizes:
        lengths = torch.randint(1, max_bag + 1, (batch,), generator=gen)
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]])
        lS_o.append(offsets)
        lS_i.append(torch.randint(0, n, (int(lengths.sum()),), generator=gen))
    return dense, lS_o, lS_i
