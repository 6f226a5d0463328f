"""Data preparation: one spec in, three checked, seeded, cached splits out (see :mod:`.prepare`).

==============  ==================================================================================
:mod:`.spec`     what the data is: ``DataSpec`` (what a config names) and ``TaskData`` (the splits)
:mod:`.prepare`  ``prepare_data``: read, check, split, cache under a content hash; ``data_hash``
:mod:`.sources`  the readers (tables, JSON, the hub, Alpaca, UltraFeedback) and ``DataError``
:mod:`.glue`     the GLUE tasks and their files
:mod:`.loading`  each source's rows, checked, as text columns and labels
:mod:`.checks`   the checks (columns, labels, empty and duplicate rows)
:mod:`.splits`   the paper's split protocol and the content-hash split that never moves a row
:mod:`.synthetic` the generated tasks of the demo and the tests
:mod:`.encoding` ``encode``: splits to model inputs, with truncation counts
==============  ==================================================================================
"""
from __future__ import annotations

from red.exports import lazy_exports

_EXPORTS = {
    "DataError": "sources",
    "DataSpec": "spec",
    "EncodedData": "encoding",
    "PREPARE_VERSION": "prepare",
    "SyntheticOptions": "spec",
    "TaskData": "spec",
    "data_hash": "prepare",
    "encode": "encoding",
    "prepare_data": "prepare",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
