"""The optional extras (``[project.optional-dependencies]`` in pyproject.toml): import the
module a feature needs, or fail with one line that says which extra installs it.

Example:
    >>> optuna = require("optuna", "dlrm tune", "tune")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtraError(ImportError, RuntimeError):
    """An optional extra is not installed. An ``ImportError`` (what it is) and a
    ``RuntimeError`` (what these features raised before they shared this module), so callers
    catching either keep working; the CLI prints its message as one line."""


def require(module: str, feature: str, extra: str, packages: str | None = None) -> ModuleType:
    """``module``, imported; if it is missing, ``MissingExtraError`` naming ``feature`` and
    ``pip install 'dlrm[extra]'`` (``packages``: what the extra brings, when not obvious)."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        brings = f" ({packages})" if packages else ""
        raise MissingExtraError(f"{feature} needs the optional extra: "
                                f"pip install 'dlrm[{extra}]'{brings}") from err
