"""Evaluation suites by name, as a retrain config lists them, run on an edit file.

A task's ``evaluate:`` list in the YAML names suites; each runs on the trained
edit (loaded with its base model from the edit file) and gives one EvalReport:

- ``test`` / ``classification``: GLUE-style metrics on the task's held-out test split;
- ``openllm-v1``, ``lm-eval:<task>[,<task>...]``: lm-eval suites (built-in tasks need the hub);
- ``{suite: lm-eval, tasks: [...], include_path: DIR, limit: N}``: local lm-eval task folders;
- ``{suite: arc, path: ARC.jsonl, limit: N, shots: 0}``: ARC multiple choice from a local JSONL file;
- ``{suite: alpaca, reference: FILE, limit: N, judge: {kind: chat, base_url, model, api_key_env} |
  {kind: reward, model: PATH}}``: AlpacaEval-style win rate against reference outputs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import AutoModelForSequenceClassification, AutoTokenizer

from red.pretrained import from_pretrained, load_pretrained_edit

from .alpaca import run_alpaca_eval
from .judges import ChatJudge, RewardModelJudge
from .lm_eval_suite import evaluate_lm
from .local_tasks import write_arc_task
from .paired import GENERATIVE, RowScores, rows_report, score_split
from .report import EvalReport
from .suite_specs import SuiteSpec, suite_name

def run_suite(suite: SuiteSpec, edit_path: str | Path, *, data=None, out_dir: str | Path = "eval",
              max_length: int = 256, loaded=None) -> EvalReport:
    """Run one suite on the edit at ``edit_path``; ``loaded`` reuses an (edited, tokenizer, meta) triple."""
    name = suite_name(suite)
    opts: dict[str, Any] = dict(suite) if isinstance(suite, dict) else {}
    edited, tokenizer, meta = loaded or load_pretrained_edit(edit_path)
    task = (meta.get("extra") or {}).get("task", "task")
    out_dir = Path(out_dir)
    if name in ("test", "classification", "glue"):
        if data is None:
            raise ValueError(f"suite {name!r} needs the task's data (a TaskData)")
        metric = "loss" if data.task_type in GENERATIVE else data.metric
        scores = score_split(edited, tokenizer, data, metric=metric, max_length=max_length)
        return rows_report(scores, data, name=f"{task}/test", model=str(edit_path))
    if name in ("openllm-v1", "lm-eval"):
        tasks = opts.get("tasks") or (suite.split(":", 1)[1].split(",") if isinstance(suite, str) and ":" in suite
                                      else "openllm-v1")
        return evaluate_lm(edited, tokenizer, tasks, limit=opts.get("limit"), include_path=opts.get("include_path"),
                           builtin_tasks=opts.get("builtin_tasks", True), name=f"{task}/{name}")
    if name == "arc":
        local = write_arc_task({"test": opts["path"]}, out_dir / "arc_task", limit=opts.get("limit"),
                               num_fewshot=opts.get("shots", 0))
        return evaluate_lm(edited, tokenizer, local.name, include_path=local.folder, builtin_tasks=False,
                           name=f"{task}/arc")
    if name == "alpaca":
        return run_alpaca_eval(edited, tokenizer, opts["reference"], judge=_judge(opts.get("judge")),
                               generator=f"redflow-{task}", limit=opts.get("limit"), out_dir=out_dir / "alpaca",
                               max_new_tokens=opts.get("max_new_tokens", 256), name=f"{task}/alpaca")
    raise ValueError(f"unknown evaluation suite {name!r}; use test, openllm-v1, lm-eval:<tasks>, arc or alpaca")


def _judge(spec: dict[str, Any] | None):
    """A judge from its YAML description (``kind: chat`` or ``kind: reward``)."""
    if not spec:
        raise ValueError("suite alpaca needs a judge: {kind: chat, base_url: ..., model: ...} or "
                         "{kind: reward, model: PATH}")
    spec = dict(spec)
    kind = spec.pop("kind", "chat")
    if kind == "chat":
        return ChatJudge(**spec)
    if kind == "reward":
        path = spec.pop("model")
        return RewardModelJudge(from_pretrained(AutoModelForSequenceClassification, path).eval(),
                                AutoTokenizer.from_pretrained(path), **spec)
    raise ValueError(f"unknown judge kind {kind!r}; use chat or reward")


def suite_metric_key(report: EvalReport, metric: str) -> str:
    """The key of gate metric ``metric`` (``<suite or task>/<name>``) among ``report.metrics``."""
    if metric in report.metrics:
        return metric
    rest = metric.split("/", 1)[1] if "/" in metric else metric
    if rest in report.metrics:
        return rest
    ends = [k for k in report.metrics if k.endswith("/" + rest)]
    if len(ends) == 1:
        return ends[0]
    raise KeyError(f"report {report.name!r} has no metric {metric!r}; it has {sorted(report.metrics)}")


def suite_scores(report: EvalReport, metric: str):
    """A suite report's gate metric as RowScores: its per-row values when the suite logs them, else the
    point value alone (compared without a confidence interval)."""
    key = suite_metric_key(report, metric)
    rows = (report.details.get("per_row") or {}).get(key)
    values = [float(v) for v in rows] if rows else [float(report.metrics[key])]
    return RowScores(metric=metric, kind="mean", values=values)
