"""What an operator reads of a night in Prefect (``prefect flow-run logs``, the UI's log tab): the run a deployment
started holds every task's decision, and every line of a task run names its task. A real retrain under the
session's Prefect server, its logs read back through the Prefect client.
"""
from __future__ import annotations

import logging

import pytest
from conftest import synthetic_task, write_retrain_config

from flows.run_logs import decision_line, names_its_task

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture
def run_logs_at_info():
    """Flow and task runs log at INFO, as by default (the suite sets PREFECT_LOGGING_LEVEL=WARNING)."""
    import prefect.main  # noqa: F401 - configures Prefect's logging (levels set before it would be reset)

    loggers = [logging.getLogger(name) for name in ("prefect.flow_runs", "prefect.task_runs")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.INFO)
    yield
    for logger, level in zip(loggers, levels):
        logger.setLevel(level)


def _logs(flow_run_ids) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # the handler sends in batches (flush drains the process's one log worker)
    return get_client(sync_client=True).read_logs(
        log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=list(flow_run_ids))))


def _subflow_runs(flow_run_id) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    return get_client(sync_client=True).read_flow_runs(flow_run_filter=FlowRunFilter(
        parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))


def test_a_nights_own_run_logs_each_decision_and_every_task_line_names_its_task(tmp_path, tiny_checkpoints,
                                                                               run_logs_at_info):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterId

    from flows.retrain import retrain

    tasks = ("sentiment", "topic")
    cfg = write_retrain_config(tmp_path / "c.yaml", tiny_checkpoints["bert"], tmp_path / "runs",
                               [synthetic_task(t, t, tmp_path) for t in tasks])
    retrain(config=str(cfg))  # night 1 trains both
    state = retrain(config=str(cfg), only=["sentiment"], force=True, return_state=True)  # night 2: one retrained
    assert state.is_completed(), state
    night = state.state_details.flow_run_id
    summary = state.result()

    # (a) the run the deployment (here: the caller) started has every task's decision line, not only its subflow
    own = [log.message for log in _logs([night])]
    for row in summary.values():
        assert decision_line(row) in own, (row, own)
    assert any(m.startswith("sentiment v2: ") for m in own), own

    # (b) every line of a task run names its task: Prefect's own "Finished in state ..." lines included
    (tasks_run,) = _subflow_runs(night)
    lines = [log for log in _logs([tasks_run.id]) if log.task_run_id is not None]
    runs = {r.id: r.name for r in get_client(sync_client=True).read_task_runs(
        task_run_filter=TaskRunFilter(id=TaskRunFilterId(any_=list({log.task_run_id for log in lines}))))}
    assert lines and set(runs) == {log.task_run_id for log in lines}
    for log in lines:
        task = runs[log.task_run_id].split("-", 1)[1]
        assert task in log.message, (runs[log.task_run_id], log.message)
    assert any(log.message.startswith("train-sentiment: Finished in state Completed") for log in lines), \
        [log.message for log in lines]


def test_a_line_that_begins_with_its_task_is_not_named_twice():
    assert names_its_task("sentiment: trained 4 optimizer steps", "train-sentiment")
    assert names_its_task("sst-2 v3: promoted (better)", "promote-sst-2")
    assert not names_its_task("Finished in state Completed()", "train-sentiment")
    assert not names_its_task("topic: trained", "train-sentiment")
    assert decision_line({"task": "topic", "status": "unchanged", "version": 1, "reason": "same inputs"}) == \
        "topic: unchanged, v1 (same inputs)"


def test_an_interrupted_retrain_moves_its_cancelling_run_to_cancelled_and_leaves_any_other_state_alone():
    """What the retrain flow does when a cancel's SIGTERM stopped its trainings: Cancelled at once, not after the
    worker's own search for on_cancellation hooks (a fresh import of redflow, up to a minute)."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelling, Running

    from flows.cancellation import cancelled_if_cancelling

    @flow(name="cancel-probe")
    def probe():
        pass

    client = get_client(sync_client=True)
    cancelling = client.create_flow_run(probe, state=Running())
    client.set_flow_run_state(cancelling.id, Cancelling(message="cancelled by an operator"), force=True)
    assert cancelled_if_cancelling(cancelling.id)
    assert client.read_flow_run(cancelling.id).state.is_cancelled()

    running = client.create_flow_run(probe, state=Running())  # SIGTERM from systemd, not a cancel: not Cancelled
    assert not cancelled_if_cancelling(running.id) and client.read_flow_run(running.id).state.is_running()
    assert not cancelled_if_cancelling(None)
