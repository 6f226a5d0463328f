"""Progress bars and model-load reports on a terminal only.

A Prefect worker, ``redflow retrain > log``, CI: their logs are read later, as lines. tqdm's carriage-return
bars (the Trainer's steps, transformers' "Loading weights", datasets' maps, the hub's downloads) and transformers'
model-load report (``LOAD REPORT ... classifier.weight MISSING ... Consider training on your downstream task``,
logged on every load of a base whose task head redflow trains fresh, by design) fill such a log with nothing an
operator acts on. So unless stderr is a terminal they are off:

* ``progress_wanted()``: ``REDFLOW_PROGRESS=1`` / ``0`` when set (the CLI sets 0 while its own reporter draws),
  else whether ``sys.stderr`` is a terminal;
* ``quiet_unless_terminal()``: where progress is not wanted, turns off transformers', huggingface_hub's and
  datasets' bars and drops transformers' load report (``transformers.utils.loading_report``, logged through the
  ``transformers.modeling_utils`` logger; a load that fails still raises its error). Idempotent; called where a
  training process loads a base model and builds its Trainer (``models.load_base_model``,
  ``trainer.training_arguments``) and by the retrain flow.

The ``redflow`` command quiets the same libraries always, through their environment variables before they load
(``flows/cli/common.quiet_libraries``): it draws its own per-task display. This module is for everything else
that trains: a Prefect worker's flow runs, Dask/Ray workers, library use.
"""
from __future__ import annotations

import logging
import os
import sys

import datasets
import huggingface_hub.utils
import transformers.utils.logging

LOAD_REPORT_LOGGER = "transformers.modeling_utils"  # transformers.utils.loading_report.log_state_dict_report's


def progress_wanted() -> bool:
    """Whether to draw progress bars: ``REDFLOW_PROGRESS`` (1/0) when set, else whether stderr is a terminal."""
    chosen = os.environ.get("REDFLOW_PROGRESS")
    if chosen is not None:
        return chosen == "1"
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


class DropLoadReport(logging.Filter):
    """Drops transformers' model-load report (``<Model> LOAD REPORT from: ...``); every other record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        return " LOAD REPORT" not in str(record.msg)


def quiet_unless_terminal() -> bool:
    """Turn bars and load reports off unless :func:`progress_wanted`; whether they are off now."""
    if progress_wanted():
        return False
    transformers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()
    datasets.disable_progress_bars()
    logger = logging.getLogger(LOAD_REPORT_LOGGER)
    if not any(isinstance(f, DropLoadReport) for f in logger.filters):
        logger.addFilter(DropLoadReport())
    return True
