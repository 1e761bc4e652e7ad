"""The one preprocessing pipeline: read -> parse by schema -> vocabulary -> write -> publish.

Modules by concern: ``schema`` (what the rows are; shipped schemas), ``io`` (inputs, the
private build folder and its one-rename publish), ``parse`` (lines and cells), ``vocabulary``
(ids), ``splits`` (train/val/test), ``stages`` (the run), ``metadata`` (skip log, progress
events, errors), ``raw`` (raw rows through a finished data set, for ``dlrm predict``).
``preprocess(schema, inputs, out, Options(...))`` is the entry; ``dlrm.data.criteo`` and
``dlrm.data.table`` are thin front ends to it. See docs/data-format.md.
"""

from dlrm.data.pipeline.metadata import BadLineError, DataError, Progress, SkipLog
from dlrm.data.pipeline.schema import Schema, load_schema, shipped_schemas
from dlrm.data.pipeline.stages import Options, preprocess

__all__ = ["BadLineError", "DataError", "Options", "Progress", "Schema", "SkipLog",
           "load_schema", "preprocess", "shipped_schemas"]
