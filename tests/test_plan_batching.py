"""An unchanged night's plans read the registry in a few calls, whatever the number of tasks (issue 21, item 4).

A real SQLite store holding one version per task, tagged the way a night registers it (digest, gate decision,
config, ``identity.json`` and the dependencies tag on its run; ``tests/test_identity.py`` checks a real night
writes them), and every ``MlflowClient`` call counted through a wrapper while the flow's planning runs in process:
one lookup for all tasks (``flows.steps.registered_versions``), then each task's ``plan_step``.
"""
from __future__ import annotations

from collections import Counter

import pytest
from conftest import write_retrain_config
from mlflow import MlflowClient

from flows.config import load_config
from flows.steps import plan_step, prepare_step, registered_versions, setup_store
from registry.names import READY, STATUS_TAG
from registry.tracking import get_or_create_experiment
from registry.version_tags import (DEPENDENCIES_RUN_TAG, GATE_DECISION_TAG, IDENTITY_ARTIFACT, IDENTITY_DIGEST_TAG,
                                   compact)
from tasks.lifecycle.identity import dependency_versions

TASKS = 6


@pytest.fixture
def counted(monkeypatch) -> Counter:
    """Every public ``MlflowClient`` method call, by name."""
    calls: Counter = Counter()
    for name in [n for n in vars(MlflowClient) if not n.startswith("_") and callable(getattr(MlflowClient, n))]:
        method = getattr(MlflowClient, name)

        def wrapper(self, *args, __name=name, __method=method, **kwargs):
            calls[__name] += 1
            return __method(self, *args, **kwargs)

        monkeypatch.setattr(MlflowClient, name, wrapper)
    return calls


def _register_as_a_night_does(client: MlflowClient, cfg, task, identity, experiment: str, *,
                              dependencies: dict[str, str] | None) -> None:
    """A ``ready``, gated version of ``task`` trained from ``identity``, with production on it; ``dependencies``:
    its run's dependencies tag (None: a version registered before the tag existed)."""
    name = cfg.model_name(task)
    run = client.create_run(experiment).info.run_id
    client.log_dict(run, {"identity": identity.to_dict(), "dependencies": dependencies or dependency_versions(),
                          "training_config": {"learning_rate": 0.01}}, IDENTITY_ARTIFACT)
    if dependencies is not None:
        client.set_tag(run, DEPENDENCIES_RUN_TAG, compact(dependencies))
    client.create_registered_model(name)
    mv = client.create_model_version(name, f"runs:/{run}/model", run_id=run, tags={
        IDENTITY_DIGEST_TAG: identity.digest(), GATE_DECISION_TAG: "promoted", "retrain_config": cfg.name,
        STATUS_TAG: READY})
    client.set_registered_model_alias(name, "production", mv.version)


def test_an_unchanged_nights_registry_calls_do_not_grow_with_its_tasks(tmp_path, tiny_checkpoints, counted):
    data = {"source": "synthetic", "task": "sentiment", "path": str(tmp_path / "data"),
            "synthetic": {"n_train": 16, "n_dev": 8}}
    tasks = [{"name": f"t{i}", "data": data} for i in range(TASKS)]
    path = write_retrain_config(tmp_path / "all.yaml", tiny_checkpoints["bert"], tmp_path / "runs", tasks)
    cfg = load_config(path)
    setup_store(cfg)
    client = MlflowClient()
    experiment = get_or_create_experiment(cfg.experiment)
    datas = {t.name: prepare_step(cfg, t) for t in cfg.tasks}
    older = dict(dependency_versions(), torch="0.0")  # t1 trained with another torch; t2 before the tag existed
    for i, t in enumerate(cfg.tasks):
        identity = plan_step(cfg, t, datas[t.name]).identity
        _register_as_a_night_does(client, cfg, t, identity, experiment,
                                  dependencies={1: older, 2: None}.get(i, dependency_versions()))

    def plans(n: int) -> tuple[dict, Counter]:
        """The flow's planning of the config's first ``n`` tasks, and the registry calls it made."""
        sub = cfg.model_copy(update={"tasks": cfg.tasks[:n]})
        counted.clear()
        registered = registered_versions(sub)
        made = {t.name: plan_step(sub, t, datas[t.name], registered=registered[sub.model_name(t)]) for t in sub.tasks}
        return made, Counter(counted)

    (few, few_calls), (many, many_calls) = plans(2), plans(TASKS)
    assert {p.action for p in many.values()} == {"unchanged"} and all(p.latest_version == 1 for p in many.values())
    # four more tasks, and the only extra calls are t2's identity.json, read because its version predates the tag
    extra = many_calls - few_calls
    assert extra["download_artifacts"] == 1 and sum(extra.values()) <= 3, (few_calls, many_calls)
    assert few_calls["search_model_versions"] == 1 and few_calls["search_runs"] == 1
    assert sum(few_calls.values()) <= 4, few_calls
    # the same decisions as each task's own lookup (its identity.json read), dependency notes included
    for name, plan in many.items():
        alone = plan_step(cfg, next(t for t in cfg.tasks if t.name == name), datas[name])
        assert (alone.action, alone.reasons, alone.latest_version) == (plan.action, plan.reasons, plan.latest_version)
    assert f"since v1: dependency torch changed (0.0 -> {dependency_versions()['torch']}) (recorded, not " \
           "retraining)" in many["t1"].reasons
    strict = cfg.model_copy(update={"retrain_on_dependency_change": True})
    assert plan_step(strict, strict.tasks[1], datas["t1"], registered=registered_versions(strict)["red-t1"]).action \
        == "train"


def test_the_lookup_follows_pages_chunks_names_and_gives_a_model_not_registered_yet_no_versions():
    """``model_versions`` against a fake registry: 250 models read in chunks of ``CHUNK`` names, each search's pages
    followed, a model with 150 versions kept whole (newest ready first), and a name with no model an empty entry."""
    from types import SimpleNamespace

    from registry import plan_lookup

    class Page(list):
        token = None

    versions = {f"m{i}": [SimpleNamespace(name=f"m{i}", version=str(v), tags={}, run_id=None) for v in range(1, 3)]
                for i in range(250)}
    versions["m7"] = [SimpleNamespace(name="m7", version=str(v), tags={}, run_id=None) for v in range(1, 151)]
    searches = []

    class Client:
        def search_model_versions(self, filter_string, page_token=None):
            names = [n.strip().strip("'") for n in filter_string[len("name IN ("):-1].split(",")]
            found = [mv for n in names for mv in versions.get(n, [])]
            searches.append((len(names), page_token))
            start = int(page_token or 0)
            page = Page(found[start:start + 40])
            page.token = str(start + 40) if start + 40 < len(found) else None
            return page

    names = [*versions, "not-registered-yet"]
    found = plan_lookup.model_versions(names, Client())
    assert {n for n, _ in searches} == {100, 51} and len([s for s in searches if s[1] is None]) == 3
    assert found["not-registered-yet"].versions == [] and found["not-registered-yet"].ready() == []
    assert [int(mv.version) for mv in found["m7"].ready()] == list(range(150, 0, -1))
    assert all(len(found[f"m{i}"].versions) == 2 for i in range(250) if i != 7)
