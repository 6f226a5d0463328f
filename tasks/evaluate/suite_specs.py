"""The evaluation suites by name, and which metrics they give a gate, read without loading a model.

A retrain config names suites (``evaluate: [test, "lm-eval:arc_easy", {suite: alpaca, ...}]``) and may gate on one
of their metrics (``promotion.metric: arc_easy/acc_norm``); :func:`check_gate_metric` refuses, at config time, a
metric the task will never produce. Running a suite is :mod:`tasks.evaluate.suites`; the lm-eval tables
(:data:`SUITES`, :class:`SuiteTask`) are read by :mod:`tasks.evaluate.lm_eval_suite`.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SuiteTask:
    """One lm-eval task (or group) of a suite: its shots and the metric it is ranked by."""

    task: str
    num_fewshot: int | None = None
    metric: str | None = None        # lm-eval metric name, e.g. "acc_norm"; None: pick acc_norm > acc > ...
    filter: str = "none"             # lm-eval filter name, e.g. "strict-match" for gsm8k
    dataset: str | None = None       # hub data set it reads (for the offline pre-flight check)


SUITES: dict[str, tuple[SuiteTask, ...]] = {
    # Open LLM Leaderboard v1 (HuggingFaceH4, 2023-2024): tasks, shots and the metric each column showed.
    "openllm-v1": (
        SuiteTask("arc_challenge", 25, "acc_norm", dataset="allenai/ai2_arc"),
        SuiteTask("hellaswag", 10, "acc_norm", dataset="Rowan/hellaswag"),
        SuiteTask("truthfulqa_mc2", 0, "acc", dataset="truthfulqa/truthful_qa"),
        SuiteTask("mmlu", 5, "acc", dataset="cais/mmlu"),
        SuiteTask("winogrande", 5, "acc", dataset="allenai/winogrande"),
        SuiteTask("gsm8k", 5, "exact_match", filter="strict-match", dataset="openai/gsm8k"),
    ),
}


def resolve_tasks(tasks: str | SuiteTask | Sequence[str | SuiteTask]) -> tuple[str, list[SuiteTask]]:
    """A suite name, a task name, ``"task:shots"``, or a list of these -> (report name, SuiteTasks)."""
    items = [tasks] if isinstance(tasks, (str, SuiteTask)) else list(tasks)
    if not items:
        raise ValueError("no lm-eval tasks given")
    out: list[SuiteTask] = []
    for item in items:
        if isinstance(item, SuiteTask):
            out.append(item)
        elif item in SUITES:
            out.extend(SUITES[item])
        else:
            name, _, shots = item.partition(":")
            out.append(SuiteTask(name, int(shots) if shots else None))
    if isinstance(tasks, str):
        label = tasks
    elif isinstance(tasks, SuiteTask):
        label = tasks.task
    else:
        label = "+".join(t if isinstance(t, str) else t.task for t in items)
    return label, out


SuiteSpec = str | dict[str, Any]


def suite_name(suite: SuiteSpec) -> str:
    """A suite's name: ``"lm-eval:arc_easy"`` -> ``lm-eval``, ``{suite: alpaca, ...}`` -> ``alpaca``."""
    if isinstance(suite, str):
        return suite.split(":", 1)[0]
    if "suite" not in suite:
        raise ValueError(f"an evaluation suite given as a mapping needs a 'suite' key, got {sorted(suite)}")
    return str(suite["suite"])


# ---- gating on a suite's metric ---------------------------------------------------------------------------
PRIMARY_METRICS = {"classification": ("accuracy", "f1", "mcc"), "regression": ("pearson", "spearman"),
                   "causal_lm": ("loss", "perplexity"), "seq2seq": ("loss", "perplexity")}


def suite_tasks(suite: SuiteSpec) -> list[str]:
    """The names a gate metric may use for ``suite``: the suite's own, and for lm-eval its tasks'."""
    name = suite_name(suite)
    names = [name]
    if name in ("openllm-v1", "lm-eval"):
        opts = dict(suite) if isinstance(suite, dict) else {}
        tasks = opts.get("tasks") or (suite.split(":", 1)[1].split(",") if isinstance(suite, str) and ":" in suite
                                      else "openllm-v1")
        names += [t.task for t in resolve_tasks(tasks)[1]]
    return names


def find_suite(suites: list[SuiteSpec], metric: str) -> SuiteSpec | None:
    """The suite of ``suites`` that produces gate metric ``metric`` (``<suite or lm-eval task>/<metric>``).

    None for a plain metric (``accuracy``, ``loss``...: the task's own test rows). Raises ValueError
    naming the suites there are when ``metric`` names a suite the task does not run.
    """
    if "/" not in metric:
        return None
    head = metric.split("/", 1)[0]
    for suite in suites:
        if suite_name(suite) != "test" and head in suite_tasks(suite):
            return suite
    have = [suite_name(s) for s in suites]
    raise ValueError(f"gate metric {metric!r} names {head!r}, which is not among this task's evaluation suites "
                     f"{have}: add the suite to the task's `evaluate:` list, or gate on a metric it produces")


def check_gate_metric(metric: str, suites: list[SuiteSpec], task_type: str | None) -> None:
    """Refuse, at config time, a gate metric that the task's training and suites will never produce."""
    if "/" in metric:
        find_suite(suites, metric)
        return
    name = metric[len("test_"):] if metric.startswith("test_") else metric
    allowed = PRIMARY_METRICS.get(task_type or "") or tuple(m for ms in PRIMARY_METRICS.values() for m in ms)
    if name not in allowed:
        raise ValueError(f"gate metric {metric!r} is not one the task's test rows give ({', '.join(allowed)}) nor "
                         "an evaluation suite's ('<suite>/<metric>', e.g. alpaca/lc_win_rate, arc_challenge/acc_norm)")
