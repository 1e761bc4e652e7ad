"""Export a trained model for serving: ``torch.export`` programs and ONNX.

Serving code cannot pass a ``SparseFeatures`` dataclass, so ``ServingDLRM`` wraps a model as
``forward(dense (B, num_dense) float32, values (N,) int64, offsets (F*B + 1,) int64) ->
probabilities (B,)``, the same feature-major layout as ``SparseFeatures`` (multi-hot bags
allowed), and returns sigmoid(logit), the click probability. Input checks are left to the
serving system (the exported graph has no data-dependent branches).

Formats (``export_model``):

- ``export``: ``torch.export.export`` with dynamic batch and value counts, saved with
  ``torch.export.save`` (name the file ``*.pt2``); load with ``torch.export.load(path).module()``.
- ``onnx``: ``torch.onnx.export`` of the ``torch.export`` program (needs the optional extra
  ``pip install 'dlrm[onnx]'``: onnx, onnxscript; onnxruntime to run it). The file records
  the serving shape in its metadata (``dlrm.num_dense``, ``dlrm.table_sizes``, ``dlrm.kind``),
  so a user of the file can check that its ids fit the model's tables (``onnx_serving_shape``).

Every model kind exports (``serving_shape`` reads the dense width and tables that every
``CTRModel`` has), quantized ones too. The file is written in a new folder beside ``path`` and
published with one rename (with its ``.data`` file first, for ONNX models over 1.5 GB whose
weights torch stores beside the graph), so an interrupted export leaves no half-written file.

TorchScript is not offered: ``torch.jit.trace`` cannot save the embeddings' custom autograd
lookup, and tracing the ``torch.export`` graph instead bakes the example's batch size into it
(tried with torch 2.13). ``torch.export`` is PyTorch's successor to it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dlrm.extras import require
from dlrm.features import SparseFeatures
from dlrm.ops import export_decompositions

EXPORT_FORMATS = ("export", "onnx")
# (dense (B, num_dense), values (N,), offsets (F*B+1,)) -> click probabilities (B,)
Serving = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
ONNX_PACKAGES = "onnx, onnxscript, onnxruntime"  # what the `onnx` extra installs


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


def serving_shape(model: nn.Module) -> tuple[int, list[int]]:
    """(num_dense, table_sizes) of a model of any kind (``CTRModel`` stores both), quantized
    or not: what ``export_model`` needs to trace the serving signature."""
    num_dense, sizes = getattr(model, "num_dense", None), getattr(model, "table_sizes", None)
    if num_dense is None or sizes is None:
        raise ValueError(f"{type(model).__name__} does not record its dense width and tables "
                         f"(num_dense, table_sizes); it cannot be exported for serving")
    return int(num_dense), [int(n) for n in sizes]


def export_model(model: nn.Module, num_dense: int, table_sizes: list[int], fmt: str,
                 path: str | Path) -> Path:
    """Write ``model`` as a serving artifact in format ``fmt`` (see the module doc)."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"export format {fmt!r}: expected one of {EXPORT_FORMATS}")
    from dlrm.models.quantized import QuantizedMLP

    if any(isinstance(m, QuantizedMLP) for m in model.modules()):
        raise ValueError("int8 MLPs (`dlrm quantize --mlp int8`) run oneDNN's int8 linear "
                         "(torch.ops.onednn), which ONNX and a portable .pt2 do not take: "
                         "export the float checkpoint, or one quantized without --mlp")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = ServingDLRM(model, len(table_sizes))
    inputs = example_inputs(num_dense, table_sizes)
    if fmt == "onnx":
        require("onnxscript", "ONNX export", "onnx", ONNX_PACKAGES)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        staged = staging / path.name
        with torch.no_grad(), _quiet_exporters():
            program = _torch_export(wrapper, inputs)
            if fmt == "export":
                torch.export.save(program, str(staged))
            else:
                onnx_program = torch.onnx.export(program, inputs, dynamo=True, verbose=False,
                                                 input_names=["dense", "values", "offsets"],
                                                 output_names=["probability"])
                onnx_program.model.metadata_props.update({
                    "dlrm.num_dense": str(num_dense),
                    "dlrm.table_sizes": json.dumps([int(n) for n in table_sizes]),
                    "dlrm.kind": type(model).__name__})
                onnx_program.save(str(staged))
        # Side files (an ONNX model's external weights) first, the file itself last.
        sides = sorted(f for f in staging.iterdir() if f.name != path.name)
        for side in sides:  # replaced only along with the file they belong to
            if (path.parent / side.name).exists() and not path.exists():
                raise ValueError(f"{path.parent / side.name} exists and is not part of "
                                 f"{path}; move it away to export there")
        for side in sides:
            os.replace(side, path.parent / side.name)
        os.replace(staged, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


# The exporters log every rewrite they try (hundreds of INFO lines, warnings about torchvision
# ops a DLRM never uses); ``-v`` (the root logger at DEBUG) shows them.
EXPORTER_LOGGERS = ("onnx_ir", "onnxscript", "torch.onnx", "torch.export", "torch._export")


@contextlib.contextmanager
def _quiet_exporters() -> Iterator[None]:
    if logging.getLogger().isEnabledFor(logging.DEBUG):
        yield
        return
    loggers = [logging.getLogger(name) for name in EXPORTER_LOGGERS]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch internals' deprecations
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


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


def import_onnxruntime() -> Any:
    """The ``onnxruntime`` module, or ``MissingExtraError`` saying which extra to install."""
    return require("onnxruntime", "ONNX Runtime", "onnx", ONNX_PACKAGES)


def onnxruntime_session(path: str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session of an exported model, ``threads`` intra-op threads
    (default: torch's), all graph optimizations on."""
    onnxruntime = import_onnxruntime()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return onnxruntime.InferenceSession(str(path), options,
                                            providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime's errors are not RuntimeErrors
        if not Path(path).is_file():
            raise FileNotFoundError(2, "No such file", str(path)) from None
        raise RuntimeError(f"{path}: ONNX Runtime cannot load it: "
                           f"{_first_line(err)}") from None


def onnx_serving_shape(session: Any) -> tuple[int, list[int]] | None:
    """(num_dense, table_sizes) recorded by ``export_model`` in an ONNX session's model
    (None for a file written without them)."""
    meta = session.get_modelmeta().custom_metadata_map
    if "dlrm.num_dense" not in meta or "dlrm.table_sizes" not in meta:
        return None
    return int(meta["dlrm.num_dense"]), [int(n) for n in json.loads(meta["dlrm.table_sizes"])]


def onnx_runner(session: Any, name: str = "ONNX model") -> Serving:
    """``session`` as the serving call on torch tensors; ONNX Runtime's errors become
    ``RuntimeError`` naming ``name``."""

    def run(dense: torch.Tensor, values: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        feeds = {"dense": dense.numpy(), "values": values.numpy(), "offsets": offsets.numpy()}
        try:
            return torch.from_numpy(session.run(None, feeds)[0])
        except Exception as err:
            raise RuntimeError(f"{name}: ONNX Runtime: {_first_line(err)}") from None

    return run


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


@contextlib.contextmanager
def onnx_serving(model: nn.Module, threads: int | None = None) -> Iterator[Serving]:
    """``model`` exported to ONNX in a temporary folder (removed on exit) and run by ONNX
    Runtime: the serving call ``(dense, values, offsets) -> (B,)`` on torch tensors."""
    num_dense, sizes = serving_shape(model)
    with tempfile.TemporaryDirectory(prefix="dlrm-onnx-") as tmp:
        path = export_model(model, num_dense, sizes, "onnx", Path(tmp) / "model.onnx")
        yield onnx_runner(onnxruntime_session(path, threads), f"{type(model).__name__} "
                          f"exported to ONNX")


def onnx_file_serving(path: str | Path, num_dense: int, table_sizes: list[int],
                      threads: int | None = None) -> Serving:
    """The serving call of an ONNX file from ``export_model``, refused (``ValueError`` naming
    the file) when the shape it records is not ``num_dense`` dense features and
    ``table_sizes`` tables: its ids would index other tables than the data's."""
    session = onnxruntime_session(path, threads)
    recorded = onnx_serving_shape(session)
    if recorded is not None and recorded != (num_dense, list(table_sizes)):
        raise ValueError(f"{path}: a model of {recorded[0]} dense features and tables "
                         f"{recorded[1]}; the data has {num_dense} and {list(table_sizes)}")
    return onnx_runner(session, str(path))


def load_exported(path: str | Path, fmt: str, threads: int | None = None) -> Serving:
    """A callable ``(dense, values, offsets) -> (B,)`` from ``export_model``'s file
    (``onnx``: an onnxruntime session wrapped to take and return torch tensors)."""
    if fmt == "export":
        return torch.export.load(str(path)).module()
    if fmt == "onnx":
        return onnx_runner(onnxruntime_session(path, threads), str(path))
    raise ValueError(f"export format {fmt!r}: expected one of {EXPORT_FORMATS}")
