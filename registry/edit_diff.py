"""Two registered versions of one model compared: their edits layer by layer, and the rows they answer differently.

``diff_versions`` downloads both versions' edit files (``registry.models.download_edit``: checksum-checked) and
compares them with ``red.compare.compare_edits`` (per layer: ||Δs||₂, max |Δs|, ||Δb||₂, max |Δb|, the cosine of
the edit vectors; ReFT: the same norms over the layer's parameters). Only edit methods have layers to compare:
a LoRA, BitFit or fully fine-tuned version is refused with ``EditDiffError`` naming why.

``disagreements`` scores both versions on a task's test split - the rows the gate compares on, through the
gate's own path (``registry.champion.score_version``: each version loaded as it serves, its class ids read
through its own label list) - and lists the rows where their predicted labels differ.

``log_production_diff`` is what a night does when it registers a version while another one is in production: it
logs the per-layer table (an MLflow table, ``edit_diff/vs_production.json``) and a bar plot
(``edit_diff/vs_production.png``) on the new version's training run. It never raises: a diff that cannot be
computed is a warning in the night's log, not a failed night.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow import MlflowClient

from red.compare import LayerDiff, compare_edits
from red.errors import RedError

from .champion import score_version, trained_max_length
from .models import download_edit, resolve_version
from .plots import edit_diff_figure
from .views import require_version

_logger = logging.getLogger(__name__)

NOT_EDITS = {"lora": "a LoRA adapter (low-rank weight updates, not per-layer edit vectors)",
             "bitfit": "BitFit biases (the base model's own bias terms, not an edit)",
             "full": "a fully fine-tuned checkpoint (every weight changed, no edit vectors)"}
DIFF_TABLE = "edit_diff/vs_production.json"
DIFF_PLOT = "edit_diff/vs_production.png"


class EditDiffError(ValueError):
    """Two versions whose edits cannot be compared (a non-edit method, another base or configuration)."""


@dataclass
class Disagreements:
    """The rows of one split where two versions' predictions differ: ``count`` of ``total``, the first ``rows``
    (``{"row", <text columns>, "label", "a", "b"}``, label names where the task has them)."""

    split: str
    total: int
    count: int
    rows: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"split": self.split, "total": self.total, "count": self.count, "rows": self.rows}


@dataclass
class VersionDiff:
    """Version ``b`` minus version ``a`` of ``model``: per-layer differences, and (with a task's data) the rows
    where they disagree."""

    model: str
    a: int
    b: int
    method: str
    layers: list[LayerDiff]
    disagreements: Disagreements | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (what ``redflow diff --json`` prints)."""
        return {"model": self.model, "a": self.a, "b": self.b, "method": self.method,
                "layers": [layer.to_dict() for layer in self.layers],
                "disagreements": self.disagreements.to_dict() if self.disagreements else None}


def _edit_method(client: MlflowClient, name: str, version: int) -> str:
    method = client.get_model_version(name, str(version)).tags.get("method", "")
    if method in NOT_EDITS:
        raise EditDiffError(f"{name} v{version} is {NOT_EDITS[method]}: it has no per-layer edit to compare. "
                            f"`redflow diff` compares versions of the edit methods (red, loreft, direft)")
    return method


def diff_versions(name: str, a: int | str, b: int | str, work_dir: str | Path | None = None,
                  client: MlflowClient | None = None) -> VersionDiff:
    """Compare the edits of versions ``a`` and ``b`` (numbers, ``v3`` or aliases) of registered model ``name``.

    Raises ``EditDiffError`` for a non-edit version or edits that do not compare (another base model, method or
    configuration), ``ValueError`` for an unknown alias, ``ModelNotFound`` for an unknown model or version."""
    client = client or MlflowClient()
    va, vb = resolve_version(name, a, client), resolve_version(name, b, client)
    for v in (va, vb):
        require_version(name, v, client)
    method_a, method_b = _edit_method(client, name, va), _edit_method(client, name, vb)
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        path_a = download_edit(name, va, Path(tmp) / "a")
        path_b = download_edit(name, vb, Path(tmp) / "b")
        try:
            layers = compare_edits(path_a, path_b)
        except RedError as exc:
            raise EditDiffError(str(exc).replace(str(path_a), f"v{va}").replace(str(path_b), f"v{vb}")) from exc
    return VersionDiff(model=name, a=va, b=vb, method=method_b or method_a, layers=layers)


def disagreements(name: str, a: int, b: int, data: Any, *, metric: str, work_dir: str | Path,
                  limit: int = 10, client: MlflowClient | None = None) -> Disagreements:
    """The rows of ``data``'s test split (a ``tasks.data.TaskData``) where versions ``a`` and ``b`` predict
    differently, scored as the gate scores them (at ``b``'s trained max length). Classification only: raises
    ``EditDiffError`` for other task types (a regression's or generation's answers differ on every row)."""
    if data.task_type != "classification":
        raise EditDiffError(f"{name}: a {data.task_type} task has no predicted labels to compare; "
                            f"only the per-layer difference applies")
    client = client or MlflowClient()
    max_length = trained_max_length(client.get_model_version(name, str(b)))
    rows_a, rows_b = (score_version(name, v, data, metric=metric, max_length=max_length, work_dir=work_dir)
                      for v in (a, b))
    labels = data.label_list or []

    def named(value: float) -> Any:
        j = int(value)
        return labels[j] if 0 <= j < len(labels) else j

    differ = [i for i, (pa, pb) in enumerate(zip(rows_a.predictions, rows_b.predictions)) if pa != pb]
    shown = []
    for i in differ[:max(0, limit)]:
        row = data.test[i]
        shown.append({"row": i, **{c: row[c] for c in data.text_columns}, "label": named(rows_a.labels[i]),
                      "a": named(rows_a.predictions[i]), "b": named(rows_b.predictions[i])})
    return Disagreements(split="test", total=len(rows_a), count=len(differ), rows=shown)


def log_production_diff(name: str, version: int, production: int | None, run_id: str,
                        client: MlflowClient | None = None) -> bool:
    """Log version ``version`` against ``production`` on run ``run_id``: the per-layer table and a bar plot
    (see the module docstring). Returns whether they were logged; never raises."""
    if production is None or int(production) == int(version):
        return False
    client = client or MlflowClient()
    try:
        diff = diff_versions(name, production, version, client=client)
        columns = list(LayerDiff.__dataclass_fields__)
        table = {c: [layer.to_dict()[c] for layer in diff.layers] for c in columns}
        client.log_table(run_id, data=table, artifact_file=DIFF_TABLE)
        figure = edit_diff_figure([layer.to_dict() for layer in diff.layers],
                                  f"{name} v{version} vs production v{production} ({diff.method})")
        if figure is not None:
            client.log_figure(run_id, figure, DIFF_PLOT)
        return True
    except EditDiffError as exc:
        _logger.info("%s v%s: no edit diff against production v%s: %s", name, version, production, exc)
    except Exception as exc:  # noqa: BLE001 - a diff is a view for people: it never fails the night
        _logger.warning("%s v%s: could not compare the edit with production v%s (%s: %s); the night goes on",
                        name, version, production, type(exc).__name__, exc)
    return False
