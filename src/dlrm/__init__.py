"""dlrm: the Deep Learning Recommendation Model and the toolkit around it."""

from dlrm.config import DLRMConfig, preset
from dlrm.features import Batch, SparseFeatures
from dlrm.models.dlrm import DLRM

__version__ = "0.1.0"
__all__ = ["DLRM", "DLRMConfig", "preset", "SparseFeatures", "Batch", "__version__"]
