"""A training's identity means "would train a different edit": nothing less, nothing more.

- the code version covers the method, data preparation and training, and none of their comments,
  docstrings or formatting; evaluation, bookkeeping, benchmarks, registry and flows are outside it;
- the base model includes its tokenizer;
- dependency versions are recorded on every version and shown when they change, and retrain only when
  the retrain config says so;
- hub data without a pinned revision is flagged, since its hash can never change.

Real parts: the repository's own sources (copied to tmp_path and edited there), a tiny real checkpoint
saved with MiniLM's tokenizer, a real retrain flow on MLflow/SQLite under the Prefect test harness.
"""
from __future__ import annotations

import ast
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import synthetic_task, write_retrain_config

from registry.version_tags import DEPENDENCIES_RUN_TAG
from tasks.lifecycle import identity as identity_module
from tasks.lifecycle.identity import (CODE_EXCLUDED, CODE_MODULES, Identity, base_id, code_files, code_version,
                                      dependency_versions, source_hash)

ROOT = Path(__file__).resolve().parents[1]


def _covered(rel: str) -> bool:
    """Whether a repository module path is in the code version's list or explicitly excluded from it."""
    entries = list(CODE_MODULES) + list(CODE_EXCLUDED)
    return any(rel == e or (e.endswith("/") and rel.startswith(e)) for e in entries)


def _copy_sources(dest: Path) -> Path:
    for package in ("red", "tasks"):
        shutil.copytree(ROOT / package, dest / package, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def _edit(path: Path, change) -> None:
    path.write_text(change(path.read_text()))


# --------------------------------------------------------------------------- the list of code modules


def test_every_listed_code_module_exists():
    """A refactor that moves a file must update CODE_MODULES / CODE_EXCLUDED, not silently hash nothing."""
    missing = [entry for entry in (*CODE_MODULES, *CODE_EXCLUDED) if not (ROOT / entry).exists()]
    assert missing == []
    assert all(reason.strip() for reason in CODE_EXCLUDED.values())  # every exclusion says why


def test_every_repository_module_that_training_imports_is_listed_or_excluded_with_a_reason():
    """What ``tasks.training`` and ``tasks.data`` load when imported (in a fresh interpreter), and what any listed
    module imports, even inside a function, is either part of the code version or excluded on purpose."""
    # the packages load their names on first use (red/exports.py): a star import loads every one, as importing
    # them did when their __init__ imported eagerly
    script = ("import os, sys\nfrom tasks.training import *\nfrom tasks.data import *\n"
              "root = os.getcwd()\n"
              "for m in list(sys.modules.values()):\n"
              "    f = getattr(m, '__file__', None) or ''\n"
              "    if f.startswith(root + os.sep) and '.venv' not in f: print(os.path.relpath(f, root))\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         check=True).stdout.split()
    imported = {Path(p).as_posix() for p in out}
    assert {"tasks/training/loop.py", "tasks/data/prepare.py"} <= imported
    assert sorted(p for p in imported if not _covered(p)) == []

    def module_file(name: str) -> str | None:
        base = ROOT.joinpath(*name.split("."))
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate.relative_to(ROOT).as_posix()
        return None

    lazy = set()
    for path in code_files(ROOT):
        package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                parent = package.rsplit(".", node.level - 1)[0] if node.level else ""
                base = ".".join(p for p in (parent, node.module or "") if p)
                names = [base] + [f"{base}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            lazy |= {f for f in map(module_file, names) if f is not None}
    assert {"tasks/evaluate/metrics.py", "red/pretrained.py"} <= lazy  # the scan sees imports inside functions
    assert sorted(p for p in lazy if not _covered(p)) == []


# --------------------------------------------------------------------------- what the code version sees


def test_comments_docstrings_and_formatting_leave_the_code_version_equal_and_a_real_change_does_not(tmp_path):
    """Reworded docs in data preparation or training retrain nothing; changed behaviour in the method, data
    preparation or training retrains."""
    root = _copy_sources(tmp_path / "src")
    assert source_hash(root) == code_version()  # a copy (a clone, an install) is the same code

    def reword(text: str) -> str:
        first_function_docstring = text.index('    """')
        text = text[:first_function_docstring] + '    """Reworded: ' + text[first_function_docstring + 7:]
        return ('"""A different module docstring.\n\nWith more words."""\n# a new comment\n'
                + text.split('"""', 2)[2].replace("\n\n\ndef ", "\n\n\n\ndef ") + "\n# trailing comment\n")

    for module in ("tasks/training/loop.py", "tasks/data/prepare.py", "tasks/data/splits.py", "red/methods/red/layer.py"):
        _edit(root / module, reword)
    assert source_hash(root) == code_version()

    for module in ("tasks/training/loop.py", "tasks/data/encoding.py", "tasks/training/mixing.py", "red/methods/red/layer.py"):
        changed = _copy_sources(tmp_path / module.replace("/", "_"))
        _edit(changed / module, lambda text: text + "\n\ndef _new_behaviour() -> int:\n    return 1\n")
        assert source_hash(changed) != code_version(), module


@pytest.mark.parametrize("module", ["tasks/evaluate/metrics.py", "tasks/evaluate/suites.py",
                                    "tasks/lifecycle/attempts.py", "tasks/lifecycle/identity.py",
                                    "tasks/tuning/study.py", "tasks/training/floors.py", "red/merge.py"])
def test_code_outside_training_does_not_change_the_code_version(tmp_path, module):
    """Evaluation, run bookkeeping, the search's bookkeeping, the benchmark driver and the export do not
    change what a training produces: editing them retrains nothing."""
    root = _copy_sources(tmp_path)
    _edit(root / module, lambda text: text + "\n\ndef _new_behaviour() -> int:\n    return 1\n")
    assert source_hash(root) == code_version()


# --------------------------------------------------------------------------- the base model's tokenizer


def test_a_changed_tokenizer_file_changes_the_base_id(tmp_path, tiny_checkpoints):
    base = tmp_path / "base"
    shutil.copytree(tiny_checkpoints["bert"], base)
    cache = tmp_path / "cache"
    before = base_id(str(base), cache_dir=cache)
    (base / "README.md").write_text("notes do not change the model")
    assert base_id(str(base), cache_dir=cache) == before

    config = json.loads((base / "tokenizer_config.json").read_text())
    config["model_max_length"] = 77
    (base / "tokenizer_config.json").write_text(json.dumps(config))
    assert base_id(str(base), cache_dir=cache) != before
    assert base_id(str(base)) == base_id(str(base), cache_dir=cache)  # the cache answers what hashing would


# --------------------------------------------------------------------------- dependencies


SAME = Identity("d", "c", "b", "src:1", dependencies={"python": "3.11.7", "torch": "2.12.0"})


def test_dependencies_are_recorded_but_do_not_make_an_identity_different_unless_asked():
    upgraded = Identity("d", "c", "b", "src:1", dependencies={"python": "3.11.7", "torch": "2.13.0"})
    assert upgraded == SAME and upgraded.matches(SAME) and upgraded.to_dict() == SAME.to_dict()
    assert not upgraded.matches(SAME, dependencies=True)
    assert upgraded.diff(SAME) == ["dependency torch changed (2.12.0 -> 2.13.0) (recorded, not retraining)"]
    assert upgraded.diff(SAME, dependencies=True) == ["dependency torch changed (2.12.0 -> 2.13.0)"]
    # a version registered before dependencies were recorded: unknown, not changed
    unrecorded = Identity.from_dict(SAME.to_dict())
    assert unrecorded is not None and unrecorded.dependencies == {}
    assert upgraded.matches(unrecorded, dependencies=True) and upgraded.diff(unrecorded) == []
    assert not SAME.matches(None)


def test_the_dependency_versions_of_this_process_are_read_from_the_installed_packages():
    from importlib.metadata import version

    versions = dependency_versions()
    assert versions["torch"] == version("torch") and versions["transformers"] == version("transformers")
    assert set(versions) == {"python", "torch", "transformers", "peft"}


def test_retrain_on_dependency_change_is_off_by_default_and_must_be_a_boolean(tmp_path, tiny_checkpoints):
    from flows.config import ConfigError, load_config

    path = write_retrain_config(tmp_path / "c.yaml", tiny_checkpoints["bert"], tmp_path / "runs",
                                [synthetic_task("s", "sentiment", tmp_path)])
    assert load_config(path).retrain_on_dependency_change is False
    assert load_config(path, {"retrain_on_dependency_change": True}).retrain_on_dependency_change is True
    with pytest.raises(ConfigError, match="retrain_on_dependency_change"):
        load_config(path, {"retrain_on_dependency_change": "sometimes"})


@pytest.mark.usefixtures("prefect_harness")
def test_nights_after_a_tokenizer_change_or_a_dependency_upgrade(tmp_path, tiny_checkpoints, monkeypatch):
    """Night 1 trains v1 and records its dependency versions. A torch upgrade leaves the task unchanged, saying
    so, unless retrain_on_dependency_change is on; a changed tokenizer file retrains: 'base model changed'."""
    from mlflow import MlflowClient

    from flows.config import load_config
    from flows.retrain import retrain
    from flows.steps import plan_step, prepare_step
    from registry.models import latest_version, version_identity

    base = tmp_path / "base"
    shutil.copytree(tiny_checkpoints["bert"], base)
    path = write_retrain_config(tmp_path / "nightly.yaml", str(base), tmp_path / "runs",
                                [synthetic_task("sentiment", "sentiment", tmp_path)])
    night1 = retrain(config=str(path))["sentiment"]
    assert night1["status"] == "trained" and night1["version"] == 1

    cfg = load_config(path)
    task = cfg.tasks[0]
    data = prepare_step(cfg, task)
    v1 = latest_version(cfg.model_name(task), config=cfg.name)
    # what an operator reads on the version (issue 27): at most 12 tags; the full identity in identity.json
    assert len(v1.tags) <= 12, sorted(v1.tags)
    assert {"task", "method", "base_model", "primary_metric", "metrics", "identity_digest", "retrain_config",
            "redflow.status", "redflow.gate.decision", "redflow.gate"} <= set(v1.tags)
    assert not [k for k in v1.tags if k.startswith(("env.", "identity.", "metric.", "eval."))]
    document = json.loads(Path(MlflowClient().download_artifacts(v1.run_id, "identity.json")).read_text())
    assert document["dependencies"] == dependency_versions() and document["training_config"]["learning_rate"]
    identity = version_identity(v1)
    assert document["identity"] == identity.to_dict() and v1.tags["identity_digest"] == identity.digest()
    assert identity == plan_step(cfg, task, data).identity and identity.dependencies == dependency_versions()
    assert document["edit_sha256"] == MlflowClient().get_run(v1.run_id).data.tags["edit_sha256"]
    # the run repeats the dependencies, so a night's plans read them in one search (tests/test_plan_batching.py)
    assert json.loads(MlflowClient().get_run(v1.run_id).data.tags[DEPENDENCIES_RUN_TAG]) == document["dependencies"]

    recorded = dependency_versions()["torch"]
    real = identity_module.installed_version
    monkeypatch.setattr(identity_module, "installed_version",
                        lambda package: "99.0" if package == "torch" else real(package))
    plan = plan_step(cfg, task, data)
    assert plan.action == "unchanged"
    assert f"since v1: dependency torch changed ({recorded} -> 99.0) (recorded, not retraining)" in plan.reasons
    strict = load_config(path, {"retrain_on_dependency_change": True})
    plan = plan_step(strict, task, data)
    assert plan.action == "train" and plan.reasons == [f"since v1: dependency torch changed ({recorded} -> 99.0)"]
    monkeypatch.setattr(identity_module, "installed_version", real)

    assert plan_step(cfg, task, data).action == "unchanged"
    config = json.loads((base / "tokenizer_config.json").read_text())
    config["model_max_length"] = 77
    (base / "tokenizer_config.json").write_text(json.dumps(config))
    plan = plan_step(cfg, task, data)
    assert plan.action == "train"
    assert len(plan.reasons) == 1 and plan.reasons[0].startswith("since v1: base model changed")


# --------------------------------------------------------------------------- hub data without a revision


def test_hub_data_without_a_pinned_revision_is_flagged_before_any_download(tmp_path, caplog):
    """Its hash sees only the name: a new upload would never retrain. The warning names the fix."""
    from tasks.data import DataError, prepare_data

    spec = {"source": "hub", "hub_name": "nyu-mll/glue", "hub_config": "rte", "task": "rte"}
    with caplog.at_level(logging.WARNING, logger="tasks.data"), pytest.raises(DataError):
        prepare_data(spec, cache_dir=tmp_path)  # offline: the download fails after the warning
    warnings = [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING and r.name.startswith("tasks.data")]
    assert len(warnings) == 1 and "no pinned revision" in warnings[0] and "hub_revision" in warnings[0]

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tasks.data"), pytest.raises(DataError):
        prepare_data({**spec, "hub_revision": "bcdcba79d07bc864c1c254ccfcedcce55bcc9a8c"}, cache_dir=tmp_path)
    assert not [r for r in caplog.records if "pinned revision" in r.getMessage()]
