"""Export a trained model for serving: ``torch.export`` programs and ONNX.

Serving code cannot pass a ``SparseFeatures`` dataclass, so ``ServingDLRM`` wraps a model as
``forward(dense (B, num_dense) float32, values (N,) int64, offsets (F*B + 1,) int64) ->
probabilities (B,)``, the same feature-major layout as ``SparseFeatures`` (multi-hot bags
allowed), and returns sigmoid(logit), the click probability. Input checks are left to the
serving system (the exported graph has no data-dependent branches).

Formats (``export_model``):

- ``export``: ``torch.export.export`` with dynamic batch and value counts, saved with
  ``torch.export.save`` (name the file ``*.pt2``); load with ``torch.export.load(path).module()``.

TorchScript is not offered: ``torch.jit.trace`` cannot save the embeddings' custom autograd
lookup, and tracing the ``torch.export`` graph instead bakes the example's batch size into it
(tried with torch 2.13). ``torch.export`` is PyTorch's successor to it.
- ``onnx``: ``torch.onnx.export`` of the ``torch.export`` program (needs the optional extra
  ``pip install 'dlrm[onnx]'``: onnx, onnxscript; onnxruntime to run it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from dlrm.features import SparseFeatures
from dlrm.ops import export_decompositions

EXPORT_FORMATS = ("export", "onnx")


class ServingDLRM(nn.Module):
    """Tensors-only front of a DLRM-like model (``forward(dense, SparseFeatures)``).

    Args:
        model: the model (put in eval mode, its input checks off).
        num_features: F, the number of sparse features.

    Call: ``forward(dense (B, num_dense), values (N,), offsets (F*B+1,)) -> (B,)`` click
    probabilities.
    """

    def __init__(self, model: nn.Module, num_features: int) -> None:
        super().__init__()
        self.model = model.eval()
        if hasattr(self.model, "check_inputs"):
            self.model.check_inputs = False
        self.num_features = num_features

    def forward(self, dense: torch.Tensor, values: torch.Tensor,
                offsets: torch.Tensor) -> torch.Tensor:
        sparse = SparseFeatures(values, offsets, self.num_features, one_hot=False)
        return torch.sigmoid(self.model(dense, sparse))


def example_inputs(num_dense: int, table_sizes: list[int], batch: int = 4, bag: int = 2,
                   seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dense, values, offsets) of ``batch`` samples with ``bag`` ids per feature (tracing)."""
    gen = torch.Generator().manual_seed(seed)
    dense = torch.rand(batch, num_dense, generator=gen)
    values = torch.cat([torch.randint(0, n, (batch * bag,), generator=gen) for n in table_sizes])
    offsets = torch.arange(0, len(table_sizes) * batch * bag + 1, bag, dtype=torch.int64)
    return dense, values, offsets


def export_model(model: nn.Module, num_dense: int, table_sizes: list[int], fmt: str,
                 path: str | Path) -> Path:
    """Write ``model`` as a serving artifact in format ``fmt`` (see the module doc)."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"export format {fmt!r}: expected one of {EXPORT_FORMATS}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = ServingDLRM(model, len(table_sizes))
    inputs = example_inputs(num_dense, table_sizes)
    with torch.no_grad():
        program = _torch_export(wrapper, inputs)
        if fmt == "export":
            torch.export.save(program, str(path))
            return path
        try:
            import onnxscript  # noqa: F401
        except ImportError as err:
            raise RuntimeError("ONNX export needs the optional extra: "
                               "pip install 'dlrm[onnx]' (onnx, onnxscript)") from err
        onnx_program = torch.onnx.export(program, inputs, dynamo=True,
                                         input_names=["dense", "values", "offsets"],
                                         output_names=["probability"])
        onnx_program.save(str(path))
        return path


def _torch_export(wrapper: nn.Module, inputs: tuple[torch.Tensor, ...]
                  ) -> torch.export.ExportedProgram:
    """The ``torch.export`` program of ``wrapper`` with the ``dlrm::*`` operators decomposed
    into ATen ops (``dlrm.ops.export_decompositions``): the artifact runs without this
    package and converts to ONNX."""
    num_features = wrapper.num_features
    batch = torch.export.Dim("batch", min=2)
    num_values = torch.export.Dim("num_values", min=2)
    dynamic: dict[str, Any] = {"dense": {0: batch}, "values": {0: num_values},
                               "offsets": {0: num_features * batch + 1}}
    program = torch.export.export(wrapper, inputs, dynamic_shapes=dynamic)
    return program.run_decompositions(export_decompositions())


def load_exported(path: str | Path, fmt: str) -> Any:
    """A callable ``(dense, values, offsets) -> (B,)`` from ``export_model``'s file
    (``onnx``: an onnxruntime session wrapped to take and return torch tensors)."""
    path = str(path)
    if fmt == "export":
        return torch.export.load(path).module()
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])

        def run(dense: torch.Tensor, values: torch.Tensor, offsets: torch.Tensor
                ) -> torch.Tensor:
            feeds = {"dense": dense.numpy(), "values": values.numpy(),
                     "offsets": offsets.numpy()}
            return torch.from_numpy(session.run(None, feeds)[0])

        return run
    raise ValueError(f"export format {fmt!r}: expected one of {EXPORT_FORMATS}")
