"""Autograd kernels of the ``dlrm`` operators: ``torch.library.register_autograd``'s contract,
without its per-call cost.

``register_autograd(op, backward, setup_context=...)`` wraps every call in a generic layer
(default filling, keyset metadata, pytree handling of ``Tensor[]`` arguments) that costs tens
of microseconds per call each way in eager mode, which small batches feel: one thread, the
``kaggle`` bottom + top MLP forward + backward at B=8 took 529 us through it and 430 us
through this module (``nn.Sequential`` of ``nn.Linear``: 352 us), and the ``kaggle`` DLRM
forward + backward at B=128 is back to the speed it had before the ops were registered.
``register_lean_autograd`` registers the same
``backward(ctx, *grads)`` and ``setup_context(ctx, inputs, output)`` as one
``torch.autograd.Function`` at the ``Autograd`` dispatch key, and calls below autograd directly
when no gradient is needed. ``torch.compile``/``torch.export`` trace through it as through
``register_autograd`` (AOTAutograd runs the Function with fake tensors): the op stays one node
in the forward graph and its backward op one node in the backward graph.

``register_no_second_derivative`` marks a backward op as not differentiable: asked for a
second derivative (``create_graph=True``), it raises with ``message`` instead of silently
giving zeros.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.library import Library

_below_autograd = torch._C._AutoDispatchBelowAutograd


def _needs_grad(args: tuple[Any, ...]) -> bool:
    if not torch.is_grad_enabled():
        return False
    for arg in args:
        if isinstance(arg, torch.Tensor):
            if arg.requires_grad:
                return True
        elif isinstance(arg, (list, tuple)) and any(
                isinstance(t, torch.Tensor) and t.requires_grad for t in arg):
            return True
    return False


def _filler(op: torch._ops.OpOverload) -> Callable[[tuple[Any, ...]], tuple[Any, ...]]:
    """A function giving ``args`` with the schema's defaults for the trailing arguments not
    passed (read from the schema once, not per call)."""
    defaults = tuple(a.default_value for a in op._schema.arguments)

    def filled(args: tuple[Any, ...]) -> tuple[Any, ...]:
        return args if len(args) >= len(defaults) else (*args, *defaults[len(args):])

    return filled


def register_lean_autograd(lib: Library, name: str, backward: Callable[..., Any],
                           setup_context: Callable[[Any, tuple, Any], None]) -> None:
    """Autograd for ``dlrm::name`` (no ``Tensor[]`` arguments): ``setup_context(ctx, inputs,
    output)`` saves what ``backward(ctx, *grads) -> one gradient per input`` needs, as for
    ``torch.library.register_autograd``."""
    op = getattr(torch.ops.dlrm, name).default

    # The combined forward(ctx, ...) form: a Function with a separate setup_context staticmethod
    # binds its arguments through inspect.signature on every apply (~20 us).
    class Function(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *args):
            with _below_autograd():
                output = op(*args)
            setup_context(ctx, args, output)
            return output

        @staticmethod
        def backward(ctx, *grads):
            return backward(ctx, *grads)

    Function.__name__ = Function.__qualname__ = f"dlrm_{name}"

    filled = _filler(op)

    def kernel(*args):
        args = filled(args)
        if _needs_grad(args):
            return Function.apply(*args)
        with _below_autograd():
            return op(*args)

    lib.impl(name, kernel, "Autograd")


def _flatten(args: tuple[Any, ...]) -> tuple[list[int | None], list[Any]]:
    """Lists of tensors spread out (so autograd sees every tensor): (their lengths, or None
    for a plain argument; the flat arguments)."""
    lengths: list[int | None] = []
    flat: list[Any] = []
    for arg in args:
        if isinstance(arg, (list, tuple)):
            lengths.append(len(arg))
            flat.extend(arg)
        else:
            lengths.append(None)
            flat.append(arg)
    return lengths, flat


def _unflatten(lengths: list[int | None], flat: tuple[Any, ...]) -> list[Any]:
    args, k = [], 0
    for length in lengths:
        if length is None:
            args.append(flat[k])
            k += 1
        else:
            args.append(list(flat[k:k + length]))
            k += length
    return args


def register_no_second_derivative(lib: Library, name: str, message: str) -> None:
    """``dlrm::name`` (a backward op) raises ``RuntimeError(message)`` when differentiated."""
    op = getattr(torch.ops.dlrm, name).default
    returns_list = str(op._schema.returns[0].type) == "List[Tensor]"

    class Function(torch.autograd.Function):
        @staticmethod
        def forward(ctx, lengths, *flat):
            with _below_autograd():
                out = op(*_unflatten(lengths, flat))
            return tuple(out) if returns_list else out

        @staticmethod
        def backward(ctx, *grads):
            raise RuntimeError(message)

    Function.__name__ = Function.__qualname__ = f"dlrm_{name}"

    filled = _filler(op)

    def kernel(*args):
        args = filled(args)
        if not _needs_grad(args):
            with _below_autograd():
                return op(*args)
        lengths, flat = _flatten(args)
        out = Function.apply(lengths, *flat)
        return list(out) if returns_list else out

    lib.impl(name, kernel, "Autograd")
