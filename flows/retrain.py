"""The retrain flow: every task of a config, prepared, trained, evaluated, registered and gated.

Tasks fan out through the flow's task runner (threads by default, Dask or Ray
for more machines). Each task's chain is independent: one task failing never
stops the others, and whatever succeeded is registered. The flow ends Failed
when any task failed, after every other task is done, so a schedule alerts.

With ``co_train`` the tasks of a group whose plan says ``train`` are trained in one
Prefect task (``co-train``, one pass over one copy of the base); each then goes on
through its own evaluate/register/promote chain exactly as if trained alone. A task
whose data or plan fails, fails alone; a group with one task to train trains it alone.

No ``from __future__ import annotations`` here (nor in flows/tuning.py, flows/manage.py): Prefect validates a flow's
parameters against its annotations, and a served deployment ships the flow to its process by value (cloudpickle),
with only the globals its code uses: string annotations naming ``Path`` or ``RetrainConfig`` no longer resolve
there (``RetrainModel is not fully defined``). Real annotations travel with the function.
"""
import logging
import uuid
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.runtime import flow_run
from prefect.utilities.annotations import allow_failure

from registry import get_or_create_experiment
from tasks.lifecycle.attempts import AttemptBusy, reused_attempt
from tasks.training import TrainingDiverged, stop_training_when_interrupted
from tasks.training.floors import did_not_learn_note
from tasks.training.progress import quiet_unless_terminal

from . import console, steps
from .artifacts import artifact_key, summary_markdown
from .cancellation import cancelled_if_cancelling
from .config import Resources, RetrainConfig, TaskSpec, load_config
from .ephemeral_servers import record_ephemeral_server
from .retries import retry_if_transient
from .run_logs import decision_line, name_task_runs_in_api_logs
from .runners import make_task_runner, requesting, subflow_task_runner
from .tuning import tune_flow

name_task_runs_in_api_logs()  # here too for Dask/Ray workers, which import this module to run its tasks


@task(name="prepare-data", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2, task_run_name="prepare-{task.name}",
      retry_condition_fn=retry_if_transient)
def prepare_data_task(cfg: RetrainConfig, task: TaskSpec):
    console.report(task.name, "prepare")
    return steps.prepare_step(cfg, task)


@task(name="plan", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2, task_run_name="plan-{task.name}",
      retry_condition_fn=retry_if_transient)
def plan_task(cfg: RetrainConfig, task: TaskSpec, data, force: bool, registered=None):
    console.report(task.name, "plan")
    plan = steps.plan_step(cfg, task, data, force=force, registered=registered)
    get_run_logger().info("%s: %s (%s)", task.name, plan.action, "; ".join(plan.reasons))
    if plan.action == steps.UNCHANGED:
        console.report(task.name, "unchanged", f"same inputs as v{plan.latest_version}")
    return plan


@task(name="train", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5, task_run_name="train-{task.name}",
      retry_condition_fn=retry_if_transient)
def train_task(cfg: RetrainConfig, task: TaskSpec, data, plan, run_key: str):
    if plan.action == steps.TRAIN:
        console.report(task.name, "train")
    result = steps.train_step(cfg, task, data, plan, run_key, callbacks=[console.training_callback(task.name)])
    if result is not None:
        logger = get_run_logger()
        for note in result.notes:
            logger.info("%s: %s", task.name, note)
        start = f"after resuming from {result.resumed_from}" if result.resumed_from else f"{result.init} start"
        if reused_attempt(result.notes):  # its note, logged above, names the attempt
            logger.info("%s: trained nothing: registering the finished attempt's result", task.name)
        else:
            logger.info("%s: trained %d optimizer steps (%s)", task.name, result.steps_trained, start)
    return result


@task(name="co-train", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5, task_run_name="co-train-{group}",
      retry_condition_fn=retry_if_transient)
def cotrain_task(cfg: RetrainConfig, group: str, tasks: list[TaskSpec], datas: list, plans: list, run_key: str):
    results = steps.cotrain_step(cfg, group, tasks, datas, plans, run_key)
    logger = get_run_logger()
    for name, result in results.items():
        if isinstance(result, BaseException):
            logger.error("%s: stopped, the other tasks went on: %s: %s", name, type(result).__name__, result)
        elif reused := reused_attempt(result.notes):
            logger.info("%s: trained nothing: %s", name, reused)
        else:
            logger.info("%s: co-trained %d optimizer steps (%s start) with %s", name, result.steps_trained,
                        result.init, ", ".join(result.co_trained_with))
    return results


@task(name="co-trained", cache_policy=NO_CACHE, task_run_name="co-trained-{task.name}")
def cotrained_task(task: TaskSpec, results):
    """One task's share of a co-training: its TrainResult, or the error that stopped it (or the whole group)."""
    if isinstance(results, BaseException):
        raise results
    outcome = results[task.name]
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


@task(name="evaluate", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2, task_run_name="evaluate-{task.name}",
      retry_condition_fn=retry_if_transient)
def evaluate_task(cfg: RetrainConfig, task: TaskSpec, result, data):
    if result is not None:
        console.report(task.name, "evaluate")
    return steps.evaluate_step(cfg, task, result, data)


@task(name="register", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2, task_run_name="register-{task.name}",
      retry_condition_fn=retry_if_transient)
def register_task(cfg: RetrainConfig, task: TaskSpec, result, evaluation):
    if result is not None:
        console.report(task.name, "register")
    return steps.register_step(cfg, task, result, evaluation)


@task(name="gate-and-promote", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2,
      task_run_name="promote-{task.name}", retry_condition_fn=retry_if_transient)
def promote_task(cfg: RetrainConfig, task: TaskSpec, registered, result, evaluation, data, plan=None):
    if registered is not None:
        console.report(task.name, "gate", f"v{registered['version']} vs production")
    elif plan is not None and plan.action == steps.GATE:
        console.report(task.name, "gate", f"v{plan.latest_version} (registered, never gated) vs production")
    decision = steps.promote_step(cfg, task, registered, result, evaluation, data, plan)
    if decision is not None:
        console.report(task.name, "done", f"v{decision.version} {decision.outcome}")
        get_run_logger().info("%s v%s: %s (%s)", task.name, decision.version, decision.outcome, decision.reason)
    return decision


class RetrainFailed(RuntimeError):
    """Some tasks failed (or diverged); whatever else was trained was registered. The message lists which and why;
    ``summary`` holds every task's row, the failed ones included."""

    def __init__(self, message: str, summary: dict[str, Any] | None = None):
        super().__init__(message)
        self.summary = summary or {}

    def __reduce__(self):  # Prefect may pickle the exception between processes
        return (type(self), (str(self), self.summary))


def new_run_key() -> str:
    """This run's key: the Prefect flow run id when there is one (retries share it), else a fresh uuid."""
    try:
        if flow_run.id:
            return str(flow_run.id)
    except Exception:  # noqa: BLE001 - outside Prefect
        pass
    return uuid.uuid4().hex


STEPS = ("prepare", "plan", "train", "evaluate", "register", "promote")


def run_tasks(cfg: RetrainConfig, run_key: str, force: bool = False) -> dict[str, Any]:
    """Submit every task's chain and collect the outcome of each (the body of the flow)."""
    logger = get_run_logger()
    chains = {}
    alone, waiting, tuned = [], [], []
    registered = _registered_versions(cfg)
    for t in cfg.tasks:
        data = prepare_data_task.submit(cfg, t)
        plan = plan_task.submit(cfg, t, data, force, registered.get(cfg.model_name(t)))
        if cfg.train_config(t).tune is not None:  # searched below, once the untuned chains are all under way
            chains[t.name] = {"prepare": data, "plan": plan}
            tuned.append(t)
        elif cfg.co_train_group(t) is None:
            alone.append((t, data, plan))
        else:
            waiting.append((t, data, plan))
    chains.update(_planned_chains(cfg, alone, run_key))
    chains.update(_co_train_chains(cfg, waiting, run_key))
    for t in tuned:
        chains[t.name] = _tuned_chain(cfg, t, chains[t.name]["prepare"], chains[t.name]["plan"], run_key)
    chains = {t.name: chains[t.name] for t in cfg.tasks}
    summary: dict[str, Any] = {}
    for name, chain in chains.items():
        for future in chain.values():
            future.wait()
        summary[name] = summary_row(name, chain)
        if summary[name]["status"] in ("failed", "diverged"):
            console.report(name, summary[name]["status"], f"at {summary[name]['step']}")
            logger.error("task %s %s: %s", name, summary[name]["status"], summary[name]["error"])
    return summary


def _submit_training(cfg: RetrainConfig, t: TaskSpec, data, plan, run_key: str):
    """``t``'s training, asking the task runner's engine for what one training of ``t`` needs (its resources)."""
    with requesting(cfg.task_runner, cfg.resources_for(t)):
        return train_task.submit(cfg, t, data, plan, run_key)


def _largest(requests: list[Resources]) -> Resources:
    """One co-training of several tasks: the most each field of their resources asks for."""
    fields = {name: [getattr(r, name) for r in requests if getattr(r, name) is not None]
              for name in Resources.model_fields}
    return Resources(**{name: max(values) for name, values in fields.items() if values})


def _registered_versions(cfg: RetrainConfig) -> dict[str, Any]:
    """What every task's plan reads from the registry, read once for all (``steps.registered_versions``: a few calls
    whatever the number of tasks); empty when that fails, and each plan then reads its own (with its retries)."""
    try:
        return steps.registered_versions(cfg)
    except Exception as exc:  # noqa: BLE001 - the plans look up their own and report what fails there
        get_run_logger().warning("reading the registry for all %d tasks at once failed (%s: %s); each task's plan "
                                 "reads its own", len(cfg.tasks), type(exc).__name__, exc)
        return {}


def _chain(cfg: RetrainConfig, t: TaskSpec, data, plan, result) -> dict[str, Any]:
    """A task's evaluate -> register -> promote after its training future ``result``: the futures by step."""
    evaluation = evaluate_task.submit(cfg, t, result, data)
    registered = register_task.submit(cfg, t, result, evaluation)
    decision = promote_task.submit(cfg, t, registered, result, evaluation, data, plan)
    return dict(zip(STEPS, (data, plan, result, evaluation, registered, decision)))


def _planned_chains(cfg: RetrainConfig, planned: list, run_key: str) -> dict[str, dict[str, Any]]:
    """The chains of the tasks trained alone, each submitted as soon as its plan is known (plans in any order).

    An unchanged task's chain ends at its plan, as does one whose data or plan failed: nothing is trained,
    evaluated, registered or gated, so no Prefect task runs for those steps (each costs the flow about a tenth of
    a second, which an unchanged night of a hundred tasks paid six hundred times; issue 21). Every other plan gets
    the ordinary chain (``gate`` included: its promote step gates the registered version).
    """
    chains: dict[str, dict[str, Any]] = {}
    by_plan = {plan: (t, data) for t, data, plan in planned}
    for plan in as_completed(list(by_plan)):
        t, data = by_plan[plan]
        plan.wait()  # its final state (``state`` may still ask the API, which can lag behind the future)
        if not plan.state.is_completed() or plan.result().action == steps.UNCHANGED:
            chains[t.name] = {"prepare": data, "plan": plan}
        else:
            chains[t.name] = _chain(cfg, t, data, plan, _submit_training(cfg, t, data, plan, run_key))
    return chains


def _co_train_chains(cfg: RetrainConfig, waiting: list, run_key: str) -> dict[str, dict[str, Any]]:
    """The chains of co-trained tasks: once their plans are known, one co-train task per group of tasks to train.

    A task whose data or plan failed keeps the failed step as its chain's end, and so does an unchanged task; a task
    to gate (and a group with one task to train) takes the ordinary chain.
    """
    chains: dict[str, dict[str, Any]] = {}
    groups: dict[str, list] = {}
    for t, data, plan in waiting:
        plan.wait()
        if not plan.state.is_completed() or plan.result().action == steps.UNCHANGED:
            chains[t.name] = {"prepare": data, "plan": plan}
        elif plan.result().action != steps.TRAIN:
            chains[t.name] = _chain(cfg, t, data, plan, _submit_training(cfg, t, data, plan, run_key))
        else:
            groups.setdefault(steps.co_train_key(cfg, t, data.result()), []).append((t, data, plan))
    for group, members in groups.items():
        if len(members) == 1:
            t, data, plan = members[0]
            chains[t.name] = _chain(cfg, t, data, plan, _submit_training(cfg, t, data, plan, run_key))
            continue
        with requesting(cfg.task_runner, _largest([cfg.resources_for(m[0]) for m in members])):
            trained = cotrain_task.submit(cfg, group, [m[0] for m in members], [m[1] for m in members],
                                          [m[2] for m in members], run_key)
        for t, data, plan in members:
            chains[t.name] = _chain(cfg, t, data, plan, cotrained_task.submit(t, allow_failure(trained)))
    return chains


class _Settled:
    """A finished subflow's State where the chain expects a future (``wait``, ``state``, ``result``)."""

    def __init__(self, state):
        self.state = state

    def wait(self) -> None:
        pass

    def result(self):
        return self.state.result()


def _tuned_chain(cfg: RetrainConfig, t: TaskSpec, data, plan, run_key: str) -> dict[str, Any]:
    """A tuned task's chain: its study as a subflow (trials through the same kind of task runner), then
    evaluate, register and gate the best trial like any training."""
    data.wait()
    plan.wait()
    chain: dict[str, Any] = {"prepare": data, "plan": plan}
    if not (data.state.is_completed() and plan.state.is_completed()):
        return chain
    if plan.result().action == steps.GATE:  # registered by a run that died before its gate: gate it, search nothing
        chain["promote"] = promote_task.submit(cfg, t, None, None, None, data, plan)
        return chain
    if plan.result().action != steps.TRAIN:
        return chain
    console.report(t.name, "tune")
    parallel = cfg.train_config(t).tune.parallel or cfg.max_workers
    runner = subflow_task_runner(cfg.task_runner, parallel, cfg.runs_dir,  # the retrain's Dask cluster / Ray
                                 [cfg.resources_for(t)])
    state = tune_flow.with_options(task_runner=runner)(cfg, t, plan.result(), run_key, return_state=True)
    chain["train"] = _Settled(state)
    if not state.is_completed():
        return chain
    result = state.result()
    chain["evaluate"] = evaluate_task.submit(cfg, t, result, data)
    chain["register"] = register_task.submit(cfg, t, result, chain["evaluate"])
    chain["promote"] = promote_task.submit(cfg, t, chain["register"], result, chain["evaluate"], data)
    return chain


def summary_row(name: str, chain: dict[str, Any]) -> dict[str, Any]:
    """One task's line of the retrain summary: trained / unchanged / failed / diverged, steps, champion vs challenger."""
    row: dict[str, Any] = {"task": name}
    failed = next(((step, f) for step, f in chain.items() if not f.state.is_completed()), None)
    if failed is not None:  # the first step that did not complete is the cause; the rest never ran
        step, future = failed
        exc = future.state.result(raise_on_failure=False)
        if isinstance(exc, AttemptBusy):  # not a failure: the same training is running elsewhere
            row.update(status="busy", steps_trained=0, version=None, reason=str(exc), promoted=False, decision="-")
            return row
        row.update(status="diverged" if isinstance(exc, TrainingDiverged) else "failed", step=step,
                   error=f"{step}: {type(exc).__name__}: {exc}")
        return row
    plan = chain["plan"].result()
    if plan.action == steps.GATE:
        d = chain["promote"].result()
        comparison = d.comparison or {}
        row.update(status="gated", steps_trained=0, version=d.version, model_name=d.model_name, metric=d.metric,
                   challenger=d.value, champion=d.previous_value, champion_version=d.previous,
                   difference=comparison.get("difference"),
                   ci=(comparison.get("ci_low"), comparison.get("ci_high")) if comparison else None,
                   rows=comparison.get("n"), promoted=d.promoted, decision=d.outcome,
                   reason=d.reason, why="; ".join(plan.reasons))
        return row
    if plan.action == steps.UNCHANGED:
        row.update(status="unchanged", steps_trained=0, version=plan.latest_version, reason="; ".join(plan.reasons),
                   promoted=False, decision="-")
        return row
    r = chain["train"].result()
    reg = chain["register"].result()
    d = chain["promote"].result()
    comparison = d.comparison or {}
    row.update(status="trained", method=r.method, metric=d.metric or r.primary_metric, steps_trained=r.steps_trained,
               resumed_from=r.resumed_from, init=r.init, why="; ".join(r.notes or plan.reasons),
               validation=r.validation.get(r.primary_metric), best_epoch=r.best_epoch,
               edit_parameters=r.edit_parameters, seconds=r.seconds, model_name=reg["model_name"],
               version=reg["version"], run_id=reg["run_id"], experiment_id=reg.get("experiment_id"), challenger=d.value, champion=d.previous_value,
               champion_version=d.previous, difference=comparison.get("difference"),
               ci=(comparison.get("ci_low"), comparison.get("ci_high")) if comparison else None,
               rows=comparison.get("n"), promoted=d.promoted, decision=d.outcome,
               reason=d.reason, co_trained_with=list(r.co_trained_with), learned=r.learned)
    if r.learned is False:  # whatever the method: the validation score never left the majority-class level
        row["note"] = did_not_learn_note(r.primary_metric, _best_validation(r), r.floor.get(r.primary_metric, 0.0),
                                         tuned=bool(r.tuning))
        row["why"] = f"{row['note']}; {row['why']}"
    if r.tuning:
        row["tuning"] = {k: r.tuning.get(k) for k in ("study", "best_trial", "best_params", "trials", "parent_run_id")}
    return row


def _best_validation(r) -> float | None:
    values = [e.get(f"validation_{r.primary_metric}") for e in r.epochs] + [r.validation.get(r.primary_metric)]
    values = [v for v in values if v is not None]
    return max(values) if values else None


@flow(name="retrain-tasks")
def retrain_tasks(cfg: RetrainConfig, run_key: str, force: bool = False) -> dict[str, Any]:
    """The subflow that owns the task runner. SIGTERM (a worker or runner cancelling the flow run, ``kill``)
    asks the trainings to stop at their next step before the task runner shuts down, which would otherwise wait
    for them to end (tasks.training.stop_training_when_interrupted)."""
    with stop_training_when_interrupted():
        return run_tasks(cfg, run_key, force)


@flow(name="retrain")
def retrain(config: str | Path = "configs/demo.yaml", only: list[str] | None = None,
            force: bool = False) -> dict[str, Any]:
    """Retrain every task in ``config`` (a YAML path) whose inputs changed since its latest version.

    ``only`` restricts to some task names; ``force`` retrains tasks whose inputs did not change.
    """
    cfg = load_config(config)
    name_task_runs_in_api_logs()  # Prefect configured its logging after this module was imported
    quiet_unless_terminal()  # no tqdm bars or model-load reports in a worker's log
    record_ephemeral_server()  # so that the next command stops it if this process is SIGKILLed
    if only:
        unknown = sorted(set(only) - {t.name for t in cfg.tasks})
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; the config has {[t.name for t in cfg.tasks]}")
        cfg = cfg.model_copy(update={"tasks": [t for t in cfg.tasks if t.name in only]})
    # the store's schema and the experiment are created here, once, before tasks fan out (several workers
    # creating a new SQLite store at once race on its migrations)
    uri = steps.setup_store(cfg)
    get_or_create_experiment(cfg.experiment)
    run_key = new_run_key()
    runner = make_task_runner(cfg.task_runner, cfg.max_workers, cfg.runs_dir,
                              [cfg.resources_for(t) for t in cfg.tasks])
    try:
        summary = retrain_tasks.with_options(task_runner=runner)(cfg, run_key, force)
    except BaseException as exc:  # a cancel (TerminationSignal): Cancelled now that the trainings stopped
        if not isinstance(exc, Exception):
            cancelled_if_cancelling(flow_run.id)
        raise
    logger = get_run_logger()  # each task's outcome in this run's own log too: the tasks' logs are the subflow's
    for row in summary.values():
        logger.log(logging.ERROR if row["status"] in ("failed", "diverged") else logging.INFO, decision_line(row))
    create_markdown_artifact(key=artifact_key("retrain", cfg.name), markdown=summary_markdown(cfg, summary, uri),
                             description=f"retrain {cfg.name}: per task trained/unchanged/failed, steps, "
                                         "champion vs challenger on the same rows, decision")
    failed = [n for n, row in summary.items() if row["status"] in ("failed", "diverged")]
    if failed:
        others = len(summary) - len(failed)
        raise RetrainFailed(
            f"{len(failed)} of {len(summary)} tasks failed ({', '.join(failed)})"
            + (f"; the other {others} completed. " if others else ". ")
            + "; ".join(f"{n}: {summary[n]['error']}" for n in failed), summary)
    return summary

