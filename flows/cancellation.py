"""A cancelled flow run reads Cancelled as soon as its trainings stopped, not a minute later.

``prefect flow-run cancel`` (or the UI's button) sets the run Cancelling; the worker then sends its process
SIGTERM, Prefect's engine raises ``TerminationSignal`` in the flow, and the trainings stop at their next step
(``tasks.training.control.stop_training_when_interrupted``). The run's final Cancelled state, though, is left to
the worker, which first loads the flow from its entrypoint to look for ``on_cancellation`` hooks: a fresh import
of redflow (torch, transformers, MLflow), 30 to 60 s on a busy machine. So the retrain flow, when interrupted
while its run is Cancelling, moves the run to Cancelled itself (:func:`cancelled_if_cancelling`); the worker's
later Cancelled finds the run already there. Anything that goes wrong here is logged and ignored: the worker
still finishes the cancellation.
"""
from __future__ import annotations

import logging
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.states import Cancelled

log = logging.getLogger(__name__)

MESSAGE = "Flow run was cancelled: training stopped at its last step; the next run of the same inputs resumes it."


def cancelled_if_cancelling(flow_run_id: UUID | str | None) -> bool:
    """Set flow run ``flow_run_id`` Cancelled if it is Cancelling; whether it did."""
    if flow_run_id is None:
        return False
    try:
        run_id = UUID(str(flow_run_id))
        with get_client(sync_client=True) as client:  # closes its HTTP connections; a bare client leaks them
            state = client.read_flow_run(run_id).state
            if state is None or not state.is_cancelling():
                return False
            result = client.set_flow_run_state(run_id, Cancelled(message=MESSAGE))
        return result.state is not None and result.state.is_cancelled()
    except Exception:  # noqa: BLE001 - the worker finishes the cancellation anyway
        log.warning("could not mark flow run %s cancelled; the worker will", flow_run_id, exc_info=True)
        return False
