"""The Prefect artifacts a retrain leaves: their keys and the retrain's summary table.

``summary_markdown`` is the artifact of a retrain flow run (flows/retrain.py): one row per task with links into
the MLflow UI when the store is a server. ``artifact_key`` makes a key Prefect accepts (lowercase letters, digits,
dashes) from config and task names; the tuning subflow's artifact (flows/tuning.py) uses it too.
"""
from __future__ import annotations

from typing import Any

from red.utils import slug

from .config import RetrainConfig


def artifact_key(*parts: str) -> str:
    """``parts`` (a kind, a config name, a task name ...) as one Prefect artifact key: each part lowercased, runs
    of other characters as ``-``, joined by ``-`` (``artifact_key("tune", "Demo 1", "sst2")`` is
    ``tune-demo-1-sst2``)."""
    return "-".join(slug(part, keep="a-z0-9-", strip="-", lower=True) for part in parts)


def summary_markdown(cfg: RetrainConfig, summary: dict[str, Any], tracking_uri: str) -> str:
    """The Prefect artifact: one row per task (status, steps trained, champion vs challenger on the same rows,
    decision) with links to its MLflow run and model version, then each task's reasons."""
    lines = [f"# Retrain `{cfg.name}`", "", f"MLflow: `{tracking_uri}` · experiment `{cfg.experiment}`", "",
             "| task | status | steps | metric | challenger | champion | improvement (95% CI) | version | decision |",
             "|---|---|---:|---|---:|---:|---|---|---|"]
    notes = []
    for row in summary.values():
        status = row["status"]
        if status in ("failed", "diverged"):
            lines.append(f"| {row['task']} | **{status}** | | | | | | | |")
            notes.append(f"- **{row['task']}**: {row.get('error', '')}")
            continue
        if status in ("unchanged", "busy"):
            version = f"v{row['version']}" if row.get("version") else ""
            lines.append(f"| {row['task']} | {status} | 0 | | | | | {version} | nothing registered |")
            notes.append(f"- {row['task']}: {row['reason']}")
            continue
        ci = row.get("ci")
        gain = (f"{row['difference']:+.4f} ({ci[0]:+.4f} to {ci[1]:+.4f})" if row.get("difference") is not None
                and ci else "")
        champion = (f"{_f(row['champion'])} (v{row['champion_version']})" if row.get("champion") is not None
                    else "none" if row.get("champion_version") is None else "")
        version = _link(f"v{row['version']}", tracking_uri, f"models/{row['model_name']}/versions/{row['version']}")
        if status == "gated":  # registered by an earlier run that died before its gate; gated tonight
            lines.append(f"| {row['task']} | gated | 0 | {row['metric']} | {_f(row['challenger'])} | {champion} | "
                         f"{gain} | {version} | {row['decision']} |")
            notes.append(f"- {row['task']}: {row['why']}. Gate: {row['reason']}. "
                         f"Model `models:/{row['model_name']}/{row['version']}`")
            continue
        run = _link("run", tracking_uri, f"experiments/{row.get('experiment_id', '')}/runs/{row['run_id']}")
        status = "trained, **did not learn**" if row.get("learned") is False else "trained"
        lines.append(f"| {row['task']} | {status} | {row['steps_trained']} | {row['metric']} | "
                     f"{_f(row['challenger'])} | {champion} | {gain} | {version} ({run}) | {row['decision']} |")
        notes.append(f"- {row['task']}: {row['why']}. Gate: {row['reason']}. MLflow run `{row['run_id']}`, "
                     f"model `models:/{row['model_name']}/{row['version']}`")
        if row.get("tuning"):
            notes.append(_trials_line(row["tuning"]))
    return "\n".join(lines + [""] + notes)


def _trials_line(tuning: dict[str, Any]) -> str:
    """The trials of a tuned task, one clause each (the subflow's own artifact has the full table)."""
    def one(t: dict[str, Any]) -> str:
        values = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in t["params"].items())
        score = f" {t['value']:.4f}" if t.get("value") is not None else ""
        best = " (best)" if t["number"] == tuning.get("best_trial") else ""
        return f"#{t['number']} {values}: {'crashed' if t.get('crashed') else t['state']}{score}{best}"

    return f"  - trials of study `{tuning['study']}`: " + "; ".join(one(t) for t in tuning.get("trials") or [])


def _link(text: str, tracking_uri: str, page: str) -> str:
    """A link into the MLflow UI when the store is a server; the bare text for a local SQLite store."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"[{text}]({tracking_uri.rstrip('/')}/#/{page})"
    return text


def _f(x) -> str:
    return "" if x is None else f"{x:.4f}"
