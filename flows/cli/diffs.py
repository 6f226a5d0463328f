"""``redflow diff MODEL A B``: two registered versions' edits compared layer by layer, and where they disagree.

The comparison is ``registry.edit_diff`` (the tensors: ``red.compare``); this module opens the store, loads the
task's rows when ``--config`` is given, and prints a table (one line per edited layer) or, with ``--json``, the
whole comparison as the only thing on stdout.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich import box
from rich.table import Table

from .common import RUNS_DIR_HELP, TRACKING_HELP, console, guard, note, print_json


def _num(value: Optional[float], digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}g}"


def _layer_table(result: dict[str, Any]) -> Table:
    """One line per edited layer: the norms of B - A and the cosine of the two edit vectors."""
    from registry.plots import short_names  # lazy: loads matplotlib; --help stays instant

    layers = result["layers"]
    red = any(row.get("scale_l2") is not None or row.get("bias_l2") is not None for row in layers)
    names = short_names([str(row["layer"]) for row in layers])
    prefix = str(layers[0]["layer"])[:-len(names[0])] if layers else ""
    title = f"{result['model']} v{result['b']} - v{result['a']} ({result['method']}): per layer" + (
        f" (under {prefix})" if prefix else "")
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("layer", no_wrap=True)
    table.add_column("params", justify="right")
    columns = ([("‖Δs‖₂", "scale_l2"), ("max|Δs|", "scale_max"), ("‖Δb‖₂", "bias_l2"), ("max|Δb|", "bias_max")]
               if red else [("‖Δθ‖₂", "l2"), ("max|Δθ|", "max_abs")])
    for header, _ in columns:
        table.add_column(header, justify="right")
    table.add_column("cosine", justify="right")
    for row, name in zip(layers, names):
        table.add_row(name, str(row["parameters"]), *[_num(row.get(key)) for _, key in columns],
                      _num(row.get("cosine"), 3))
    return table


def _disagreement_table(result: dict[str, Any]) -> Table:
    """The first rows where the two versions predict different labels."""
    found = result["disagreements"]
    table = Table(box=box.SIMPLE_HEAD, title_justify="left",
                  title=f"v{result['a']} and v{result['b']} disagree on {found['count']} of {found['total']} "
                        f"{found['split']} rows" + (f" (first {len(found['rows'])})" if found["rows"] else ""))
    texts = [k for k in (found["rows"][0] if found["rows"] else {}) if k not in ("row", "label", "a", "b")]
    table.add_column("row", justify="right")
    for column in texts:
        table.add_column(column, overflow="ellipsis", max_width=48, no_wrap=True)
    for column in ("label", f"v{result['a']}", f"v{result['b']}"):
        table.add_column(column)
    for row in found["rows"]:
        table.add_row(str(row["row"]), *[str(row[c]) for c in texts], str(row["label"]), str(row["a"]),
                      str(row["b"]))
    return table


def diff(model_name: str = typer.Argument(..., help="Registered model, e.g. red-sentiment."),
         a: str = typer.Argument(..., help="First version: a number (3, v3) or an alias (production)."),
         b: str = typer.Argument(..., help="Second version: a number or an alias (candidate)."),
         config: Optional[Path] = typer.Option(None, help="Retrain config: also score both versions on the task's "
                                                          "test rows (the gate's) and list where they disagree."),
         task: Optional[str] = typer.Option(None, help="Task in --config (default: the one registering "
                                                       "MODEL_NAME)."),
         rows: int = typer.Option(10, min=0, help="Disagreeing rows to show (all are counted)."),
         as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON (the only stdout)."),
         tracking_uri: Optional[str] = typer.Option(None, help=TRACKING_HELP),
         runs_dir: str = typer.Option("runs", help=RUNS_DIR_HELP)) -> None:
    """Compare two versions' edits: per layer ‖Δs‖₂, max|Δs|, ‖Δb‖₂, max|Δb| (ReFT: over the layer's
    parameters) and the cosine of the edit vectors; with --config, the test rows where their predictions differ.
    Versions of LoRA, BitFit or full fine-tuning are refused (exit 2): they have no per-layer edit."""
    from registry.edit_diff import diff_versions, disagreements  # lazy: loads MLflow and torch; --help stays instant

    from ..operations import open_store, task_for_model  # lazy: loads MLflow; --help stays instant

    with guard():
        cfg = None
        if config is not None:
            from ..config import load_config  # lazy: loads torch; --help stays instant

            cfg = load_config(config)
        note(open_store(tracking_uri, runs_dir, cfg=cfg).describe())
        found = diff_versions(model_name, a, b)
        if cfg is not None:
            from mlflow import MlflowClient  # lazy: loads MLflow; --help stays instant

            from ..steps import prepare_step  # lazy: loads the training stack; --help stays instant

            data = prepare_step(cfg, task_for_model(cfg, model_name, task))
            if data.task_type == "classification":
                metric = MlflowClient().get_model_version(model_name, str(found.b)).tags.get("primary_metric")
                found.disagreements = disagreements(model_name, found.a, found.b, data, metric=metric or "accuracy",
                                                    limit=rows, work_dir=Path(cfg.runs_dir) / "cache" / "diff")
            else:
                note(f"a {data.task_type} task has no predicted labels to compare: only the per-layer difference")
        result = found.to_dict()
        if as_json:
            print_json(result)
            return
        console.print(_layer_table(result))
        if result["disagreements"] is not None:
            console.print(_disagreement_table(result))
        elif cfg is None:
            note("pass --config (the task's retrain config) to compare their predictions on the task's test rows")
