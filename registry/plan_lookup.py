"""What tonight's plans read from the registry, for every task of a config in a few calls (issue 21).

Each task's plan (``flows.steps.plan_step``) needs its model's ``ready`` versions and, for the versions that may
have been trained from tonight's inputs, their training identity with the dependency versions they recorded.
Read task by task that was a search and one ``identity.json`` download per task, so an unchanged night of a
hundred tasks made some 300 registry calls. Here it is one ``search_model_versions`` over all the config's models
(``name IN (...)``, in chunks of :data:`CHUNK`) and one ``search_runs`` over the latest versions' training runs
for their ``redflow.dependencies`` tag (written at registration beside ``identity.json``). (The ``production``
alias of an ``init: production`` task is still read per such task: MLflow's SQL store leaves a searched
version's aliases empty.)

A version whose ``identity_digest`` tag equals tonight's identity's digest was trained from the same four hashes
(the digest is a hash of them): its record is built from its tags and its run's dependency tag, without reading
the document. Whatever this cannot answer (a version registered before the tag existed, a run outside the
config's experiment, a digest that differs: a night that trains) is read as before, one ``identity.json`` per
version (``registry.models.version_record``), so the plan's decision is the same either way.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tasks.lifecycle.identity import Identity
from tasks.lifecycle.plan import VersionRecord

from .aliases import is_gated
from .models import may_have_identity, ready_of, version_record
from .version_tags import DEPENDENCIES_RUN_TAG, IDENTITY_DIGEST_TAG, json_or_none

CHUNK = 100  # names (or run ids) per search: the filter stays far below SQL's and HTTP's length limits


@dataclass
class ModelVersions:
    """One registered model's versions as one search found them (every status and config) and the tags of the
    training runs found for some of them (run id -> tags)."""

    versions: list = field(default_factory=list)
    run_tags: dict[str, dict[str, str]] = field(default_factory=dict)

    def ready(self, config: str | None = None) -> list:
        """The ``ready`` versions, newest first; ``config``: those registered by that retrain config or by none
        (the rule of ``registry.models.ready_versions``)."""
        return ready_of(self.versions, config=config)


def _quoted(values: Iterable[str]) -> str:
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)


def _chunks(values: list[str]) -> Iterable[list[str]]:
    for i in range(0, len(values), CHUNK):
        yield values[i:i + CHUNK]


def model_versions(names: Iterable[str], client: MlflowClient | None = None,
                   *, experiment_ids: Iterable[str] = (), config: str | None = None) -> dict[str, ModelVersions]:
    """Every version of each model in ``names`` (one search per :data:`CHUNK` names, pages followed) and, with
    ``experiment_ids``, the tags of the latest ``ready`` version's training run of each (``config``: as
    :meth:`ModelVersions.ready`) found in those experiments. A model that does not exist has no versions."""
    client = client or MlflowClient()
    wanted = sorted(set(names))
    found = {name: ModelVersions() for name in wanted}
    for chunk in _chunks(wanted):
        token = None
        while True:
            page = client.search_model_versions(f"name IN ({_quoted(chunk)})", page_token=token)
            for mv in page:
                if mv.name in found:
                    found[mv.name].versions.append(mv)
            token = getattr(page, "token", None)
            if not token:
                break
    experiments = list(experiment_ids)
    if experiments:
        latest = {}
        for name, entry in found.items():
            ready = entry.ready(config)
            if ready and ready[0].run_id:
                latest[ready[0].run_id] = name
        for chunk in _chunks(sorted(latest)):
            runs = client.search_runs(experiments, filter_string=f"attributes.run_id IN ({_quoted(chunk)})",
                                      max_results=len(chunk))
            for run in runs:
                found[latest[run.info.run_id]].run_tags[run.info.run_id] = dict(run.data.tags)
    return found


def experiment_id(name: str, client: MlflowClient | None = None) -> str | None:
    """The id of experiment ``name``, or None when it does not exist (nothing to look up there)."""
    try:
        experiment = (client or MlflowClient()).get_experiment_by_name(name)
    except MlflowException:
        return None
    return experiment.experiment_id if experiment is not None else None


def record_from_tags(mv, identity: Identity, run_tags: dict[str, str] | None) -> VersionRecord | None:
    """Version ``mv``'s record without reading its ``identity.json``: when its digest is ``identity``'s (same four
    hashes) and its training run's tags hold the dependency versions it recorded; else None (read the document)."""
    if (mv.tags or {}).get(IDENTITY_DIGEST_TAG) != identity.digest() or not run_tags:
        return None
    dependencies = json_or_none(run_tags.get(DEPENDENCIES_RUN_TAG))
    if not isinstance(dependencies, dict) or not all(isinstance(v, str) for v in dependencies.values()):
        return None
    same = Identity(**identity.to_dict(), dependencies=dependencies)
    return VersionRecord(number=int(mv.version), identity=same, gated=is_gated(mv), recipe=None)


def plan_records(entry: ModelVersions, identity: Identity, config: str | None = None) -> list[VersionRecord]:
    """The records the plan compares tonight's ``identity`` with: the latest ``ready`` version's, then each earlier
    one that may have tonight's identity (``registry.models.may_have_identity``), newest first. From the tags where
    they suffice (:func:`record_from_tags`), else from the version's ``identity.json``."""
    ready = entry.ready(config)
    return [record_from_tags(mv, identity, entry.run_tags.get(mv.run_id)) or version_record(mv)
            for i, mv in enumerate(ready) if i == 0 or may_have_identity(mv, identity)]

