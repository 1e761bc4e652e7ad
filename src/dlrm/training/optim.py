"""One optimizer object for dense parameters (SGD, Adagrad, Adam) and sparse embedding rows,
and a full-batch L-BFGS over every parameter (for convex models such as logistic regression).

Embedding weights (parameters marked ``sparse_rows``) are updated only on the rows a batch
looked up:

- ``sgd``: ``W[i] -= lr * sum of the gradient rows of id i``, duplicates accumulating, in batch
  order (``dlrm::sgd_rows_``: on CPU one native pass, elsewhere one ``scatter_add_``; both give
  the same bits);
- ``rowwise_adagrad`` (as FBGEMM): one accumulator per row, ``a[i] += mean_d(g_i^2)``,
  ``W[i] -= lr * g_i / (sqrt(a[i]) + eps)``, with g_i the summed gradient of id i
  (``dlrm::rowwise_adagrad_rows_``).

``build_optimizer`` gives every ``FusedEmbeddingBag`` of the model its row update
(``RowUpdate``: the lr tensor and the accumulator live here, shared), and the lookup's backward
applies it in place of a gradient, as FBGEMM's table-batched embeddings fuse their optimizer:
no sparse gradient tensor is made, and ``torch.compile`` can compile the whole step. Weights
that still receive a sparse gradient — replicated tables of a distributed job, whose
gradients are summed over ranks first, or a model that got its optimizer after the backward —
are updated by ``step()`` with the same operators.

Usage is a plain PyTorch loop: ``loss.backward(); opt.step(); opt.zero_grad()``, or
``opt.minimize(forward_backward)``, which every optimizer here takes (L-BFGS needs it: it
evaluates the batch several times per step).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from dlrm import ops
from dlrm.allocator import empty_table
from dlrm.models.embeddings import FusedEmbeddingBag, RowUpdate


def _sparse_rows(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (N,), rows (N, D)) of a sparse COO gradient, coalesced or not."""
    return grad._indices()[0], grad._values()


class _RowOptimizer:
    """What the two row optimizers share: their parameters, an lr as a 0-d tensor (the
    fused backward reads it at each step, so schedules change it in place), the modules they
    update inside the backward."""

    def __init__(self, params: list[nn.Parameter], lr: float) -> None:
        self.params = params
        self.lr_tensor = torch.tensor(float(lr), dtype=torch.float64)

    @property
    def lr(self) -> float:
        return float(self.lr_tensor)

    @lr.setter
    def lr(self, value: float) -> None:
        self.lr_tensor.fill_(float(value))

    def row_update(self, index: int) -> RowUpdate:
        return RowUpdate(self.lr_tensor)

    def attach(self, modules: list[FusedEmbeddingBag]) -> None:
        """Have each module apply this optimizer inside its backward."""
        by_param = {id(p): k for k, p in enumerate(self.params)}
        for module in modules:
            module.row_update = self.row_update(by_param[id(module.weight)])


class SparseSGD(_RowOptimizer):
    """Plain SGD on the rows a batch touched; duplicates accumulate."""

    @torch.no_grad()
    def step(self) -> None:
        for weight in self.params:
            grad = weight.grad
            if grad is None:  # no gradient: updated in the backward, or not used
                continue
            if not grad.is_sparse:
                weight.add_(grad, alpha=-self.lr)
                continue
            ids, rows = _sparse_rows(grad)
            ops.sgd_rows_(weight, ids, rows, self.lr_tensor)

    def state_dict(self) -> dict[str, Any]:
        return {"lr": self.lr}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lr = state["lr"]


class RowWiseAdagrad(_RowOptimizer):
    """Row-wise Adagrad (one accumulator per embedding row), as FBGEMM's."""

    def __init__(self, params: list[nn.Parameter], lr: float, eps: float = 1e-8,
                 initial_accumulator_value: float = 0.0) -> None:
        super().__init__(params, lr)
        self.eps = eps
        # One float per row, read and written at the looked-up rows: on huge pages as the rows.
        self.accumulators = [
            empty_table(p.shape[0], 1, device=p.device).view(-1).fill_(initial_accumulator_value)
            for p in params]

    def row_update(self, index: int) -> RowUpdate:
        return RowUpdate(self.lr_tensor, self.accumulators[index], self.eps)

    @torch.no_grad()
    def step(self) -> None:
        for weight, acc in zip(self.params, self.accumulators):
            grad = weight.grad
            if grad is None:  # no gradient: updated in the backward, or not used
                continue
            if not grad.is_sparse:
                grad = grad.to_sparse()
            ids, rows = _sparse_rows(grad)
            ops.rowwise_adagrad_rows_(weight, acc, ids, rows, self.lr_tensor, self.eps)

    def state_dict(self) -> dict[str, Any]:
        return {"lr": self.lr, "eps": self.eps, "accumulators": self.accumulators}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lr, self.eps = state["lr"], state["eps"]
        for acc, saved in zip(self.accumulators, state["accumulators"]):
            acc.copy_(saved)


DENSE_OPTIMIZERS = ("sgd", "adagrad", "adam", "lbfgs")
SPARSE_OPTIMIZERS = ("sgd", "rowwise_adagrad")


class HybridOptimizer:
    """Dense optimizer over ordinary parameters + a row-sparse one over embedding weights."""

    def __init__(self, dense: torch.optim.Optimizer | None,
                 sparse: SparseSGD | RowWiseAdagrad | None,
                 sparse_params: list[nn.Parameter]) -> None:
        self.dense = dense
        self.sparse = sparse
        self.sparse_params = sparse_params

    def zero_grad(self) -> None:
        if self.dense is not None:
            self.dense.zero_grad(set_to_none=True)
        for p in self.sparse_params:
            p.grad = None

    def step(self) -> None:
        if self.dense is not None:
            self.dense.step()
        if self.sparse is not None:
            self.sparse.step()

    def minimize(self, forward_backward: Callable[[], torch.Tensor]) -> torch.Tensor:
        """One step: ``forward_backward()`` computes the batch loss and its backward (the
        embedding rows update inside it), then the dense parameters step. Returns the loss."""
        loss = forward_backward()
        self.step()
        self.zero_grad()
        return loss

    def set_lr(self, dense_lr: float, sparse_lr: float | None = None) -> None:
        """Change the learning rates (for schedules)."""
        if self.dense is not None:
            for group in self.dense.param_groups:
                group["lr"] = dense_lr
        if self.sparse is not None:
            self.sparse.lr = dense_lr if sparse_lr is None else sparse_lr

    def state_dict(self) -> dict[str, Any]:
        return {"dense": self.dense.state_dict() if self.dense is not None else None,
                "sparse": self.sparse.state_dict() if self.sparse is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.dense is not None:
            self.dense.load_state_dict(state["dense"])
        if self.sparse is not None:
            self.sparse.load_state_dict(state["sparse"])


def build_optimizer(model: nn.Module, name: str = "sgd", lr: float = 0.1,
                    sparse_name: str | None = None, sparse_lr: float | None = None,
                    weight_decay: float = 0.0, eps: float = 1e-8) -> HybridOptimizer:
    """Optimizer for ``model``'s dense parameters (``name``) and embedding rows.

    Args:
        name: dense optimizer, ``sgd`` (default, lr 0.1 as the reference Kaggle recipe),
            ``adagrad`` or ``adam``; or ``lbfgs`` for every parameter (``FullBatchLBFGS``:
            the embedding rows too, so ``sparse_name`` and ``sparse_lr`` do not apply).
        lr: dense learning rate; also the embeddings' unless ``sparse_lr`` is given.
        sparse_name: ``sgd`` or ``rowwise_adagrad``; default ``rowwise_adagrad`` when the dense
            optimizer is adaptive, else ``sgd``.
        weight_decay: L2 on dense parameters only (embedding rows stay sparse); with
            ``lbfgs`` an L2 penalty on every weight but the biases.
    """
    if name not in DENSE_OPTIMIZERS:
        raise ValueError(f"optimizer {name!r}: expected one of {DENSE_OPTIMIZERS}")
    if sparse_name is None:
        sparse_name = "sgd" if name == "sgd" else "rowwise_adagrad"
    if sparse_name not in SPARSE_OPTIMIZERS:
        raise ValueError(f"sparse optimizer {sparse_name!r}: expected one of {SPARSE_OPTIMIZERS}")
    if lr <= 0:
        raise ValueError(f"learning rate {lr}: must be positive")
    if name == "lbfgs":
        return FullBatchLBFGS(model, lr=lr, weight_decay=weight_decay)
    sparse_params = [p for p in model.parameters() if getattr(p, "sparse_rows", False)]
    sparse_ids = {id(p) for p in sparse_params}
    dense_params = [p for p in model.parameters() if id(p) not in sparse_ids and p.requires_grad]
    dense: torch.optim.Optimizer | None = None
    if dense_params:
        if name == "sgd":
            dense = torch.optim.SGD(dense_params, lr=lr, weight_decay=weight_decay)
        elif name == "adagrad":
            dense = torch.optim.Adagrad(dense_params, lr=lr, weight_decay=weight_decay, eps=eps)
        else:
            dense = torch.optim.Adam(dense_params, lr=lr, weight_decay=weight_decay, eps=eps)
    row_lr = lr if sparse_lr is None else sparse_lr
    sparse: SparseSGD | RowWiseAdagrad | None = None
    if sparse_params:
        sparse = SparseSGD(sparse_params, row_lr) if sparse_name == "sgd" \
            else RowWiseAdagrad(sparse_params, row_lr, eps=eps)
        # Every table module updates its rows in its own backward, but replicated tables of
        # a distributed job: their row gradients are summed over ranks before the step.
        sparse.attach([m for m in model.modules() if isinstance(m, FusedEmbeddingBag)
                       and id(m.weight) in sparse_ids
                       and not getattr(m.weight, "replicated", False)])
    return HybridOptimizer(dense, sparse, sparse_params)


class FullBatchLBFGS(HybridOptimizer):
    """L-BFGS with a strong-Wolfe line search over every parameter, embedding rows included,
    for a batch that is the whole training split: the way to a convex model's optimum (a
    logistic regression's, as scikit-learn's default ``lbfgs`` solver finds it).

    Objective, for weights w (every parameter but those named ``*bias``, which, as in
    scikit-learn, are not penalized)::

        mean_b BCE(logit_b, y_b) + weight_decay / 2 * sum ||w||^2

    so ``weight_decay = 1 / (C * N)`` is scikit-learn's ``LogisticRegression(C=C)`` on N rows.
    One ``minimize`` call runs up to ``iterations`` L-BFGS iterations (each one gradient plus
    its line search's evaluations) and returns the data loss at its start. The lookup's
    gradient arrives as a sparse tensor (no row update is attached); torch's L-BFGS gathers it
    dense (here too when the penalty's gradient is added to it). L-BFGS keeps ``history``
    dense copies of every parameter, so this is for models whose parameters fit
    ~2 * history times over in memory.

    Args:
        model: any model; all its trainable parameters are optimized.
        lr: the step scale of each iteration (1.0: the line search's own step).
        weight_decay: the L2 strength above.
        iterations: L-BFGS iterations per ``minimize`` (per training step).
        history: curvature pairs kept (scikit-learn's lbfgs keeps 10).
    """

    def __init__(self, model: nn.Module, lr: float = 1.0, weight_decay: float = 0.0,
                 iterations: int = 10, history: int = 10) -> None:
        params = [p for p in model.parameters() if p.requires_grad]
        lbfgs = torch.optim.LBFGS(params, lr=lr, max_iter=iterations, history_size=history,
                                  line_search_fn="strong_wolfe", tolerance_grad=1e-9,
                                  tolerance_change=1e-12)
        super().__init__(lbfgs, None, [])
        self.params = params
        self.weight_decay = float(weight_decay)
        self.penalized = [p for name, p in model.named_parameters()
                          if p.requires_grad and not name.endswith("bias")]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        raise RuntimeError("L-BFGS evaluates the batch several times per step: call "
                           "minimize(forward_backward) instead of backward() + step()")

    def minimize(self, forward_backward: Callable[[], torch.Tensor]) -> torch.Tensor:
        first: list[torch.Tensor] = []

        def objective() -> torch.Tensor:
            self.zero_grad()
            loss = forward_backward().detach()
            if not first:
                first.append(loss)
            if not self.weight_decay:  # torch's L-BFGS reads missing and sparse grads itself
                return loss
            penalty = torch.zeros((), dtype=torch.float64)
            with torch.no_grad():
                for p in self.penalized:  # the penalty's gradient needs a dense one
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                    elif p.grad.is_sparse:
                        p.grad = p.grad.to_dense()
                    p.grad.add_(p, alpha=self.weight_decay)
                    penalty += 0.5 * self.weight_decay * p.square().sum(dtype=torch.float64)
            return loss + penalty.to(loss.dtype)

        self.dense.step(objective)
        self.zero_grad()
        return first[0]

    def set_lr(self, dense_lr: float, sparse_lr: float | None = None) -> None:
        for group in self.dense.param_groups:
            group["lr"] = dense_lr
