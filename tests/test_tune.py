"""Learning-rate search inside the nightly retrain, and the "did not learn" flag.

Real Optuna studies in SQLite storage, real Prefect flows (under the session's test harness), a real
MLflow registry on SQLite, and the packaged MiniLM on small generated tasks.
"""
from __future__ import annotations

import csv
import math
import random
from pathlib import Path

import pytest
from conftest import write_retrain_config
from mlflow import MlflowClient

from flows.config import load_config

pytestmark = pytest.mark.usefixtures("prefect_harness")

GOOD_LR, OTHER_LR, BAD_LR = 3e-2, 6e-2, 1e-6


def _client(cfg_path) -> MlflowClient:
    from registry import setup_tracking

    cfg = load_config(cfg_path)
    setup_tracking(cfg.tracking_uri, cfg.runs_dir)
    return MlflowClient()


def _study(cfg_path, study_name: str):
    import optuna

    cfg = load_config(cfg_path)
    return optuna.load_study(study_name=study_name, storage=f"sqlite:///{Path(cfg.runs_dir).resolve()}/optuna.db")


def _latest_artifact(key: str) -> str:
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def read():
        async with get_client() as client:
            found = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
            return max(found, key=lambda a: a.created).data

    return asyncio.run(read())


def _noise_csv(path: Path, n: int = 160) -> Path:
    """Texts that say nothing about their labels, 3 of 4 labelled 'common': nothing to learn but the majority."""
    rng = random.Random(0)
    words = ["table", "river", "pencil", "cloud", "window", "garden", "engine", "letter", "bottle", "ladder"]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sentence", "label"])
        for i in range(n):
            text = f"item {i} {rng.choice(words)} {rng.choice(words)}"
            writer.writerow([text, "common" if rng.random() < 0.75 else "rare"])
    return path


def _keyword_csv(path: Path, n: int = 128) -> dict:
    """'the <thing> <i> was <adverb> good|bad': a task MiniLM learns in a few steps at a fitting learning rate."""
    rng = random.Random(n)
    things = ["movie", "film", "book", "meal", "hotel", "concert", "show", "album", "game", "play", "novel", "song"]
    adverbs = ["really", "quite", "very", "truly", "rather", "so", "pretty", "fairly"]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sentence", "label"])
        for i in range(n):
            good = i % 2 == 1
            writer.writerow([f"the {rng.choice(things)} {i} was {rng.choice(adverbs)} {'good' if good else 'bad'}",
                             "positive" if good else "negative"])
    return {"source": "csv", "path": str(path), "text_columns": ["sentence"], "label_list": ["negative", "positive"],
            "validation_size": 0.25, "test_size": 0.25}


DEFAULTS = {"method": "red", "epochs": 2, "batch_size": 16, "max_length": 24, "learning_rate": 1e-2,
            "logging_steps": 2}


def test_a_tuned_task_registers_its_best_trial_and_an_untrained_floor_is_flagged(tmp_path, minilm_path):
    """Night 1: the tuned task runs 3 trials (the bad learning rate is pruned after epoch 1), registers ONE
    version from the best trial, nested under a parent MLflow run with the trials and Optuna's plots; an
    untuned task whose labels carry no signal trains, registers, and is flagged 'did not learn'. Night 2:
    nothing changed, nothing tuned. Night 3 (more data): the new study's first trial is v1's best rate."""
    from flows.artifacts import summary_markdown
    from flows.retrain import retrain

    tune = {"trials": 3, "parallel": 1, "pruner": "median", "pruner_startup_trials": 2, "sampler": "qmc",
            "learning_rate": [1e-6, 1e-1], "start_at_config": False,
            "first_trials": [{"learning_rate": GOOD_LR}, {"learning_rate": OTHER_LR}, {"learning_rate": BAD_LR}]}
    tasks = [{"name": "sentiment", "data": _keyword_csv(tmp_path / "reviews.csv"), "tune": tune},
             {"name": "noise", "data": {"source": "csv", "path": str(_noise_csv(tmp_path / "noise.csv")),
                                        "text_columns": ["sentence"], "label_list": ["common", "rare"]}}]
    cfg_path = write_retrain_config(tmp_path / "tuned.yaml", minilm_path, tmp_path / "runs", tasks,
                                    defaults=DEFAULTS)
    client = _client(cfg_path)

    summary = retrain(config=str(cfg_path))
    row = summary["sentiment"]
    assert row["status"] == "trained" and row["version"] == 1 and row["learned"] is True
    trials = {t["number"]: t for t in row["tuning"]["trials"]}
    assert [t["params"]["learning_rate"] for t in trials.values()] == [GOOD_LR, OTHER_LR, BAD_LR]
    assert [t["state"] for t in trials.values()] == ["complete", "complete", "pruned"]  # 2 finish before pruning
    complete = {n: t["value"] for n, t in trials.items() if t["state"] == "complete"}
    best = row["tuning"]["best_trial"]
    assert complete[best] == max(complete.values()) and row["validation"] == pytest.approx(complete[best])
    assert "tuned: 3 trials" in row["why"] and "1 pruned" in row["why"]

    # one version, from the best trial, nested under the study's parent run with the trials
    versions = client.search_model_versions("name='red-sentiment'")
    assert [int(v.version) for v in versions] == [1]
    run = client.get_run(versions[0].run_id)
    parent_id = run.data.tags["mlflow.parentRunId"]
    assert float(run.data.params["learning_rate"]) == pytest.approx(trials[best]["params"]["learning_rate"])
    parent = client.get_run(parent_id)
    assert parent.data.tags["redflow.run_kind"] == "tune" and parent.info.status == "FINISHED"
    assert float(parent.data.params["best.learning_rate"]) == pytest.approx(trials[best]["params"]["learning_rate"])
    assert parent.data.metrics["trials_pruned"] == 1 and parent.data.metrics["best_value"] == complete[best]
    artifacts = {a.path for a in client.list_artifacts(parent_id, "plots")} | {
        a.path for a in client.list_artifacts(parent_id)}
    assert {"plots/optimization_history.png", "plots/param_importances.png", "trials.json", "trials.md"} <= artifacts
    children = client.search_runs([run.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    trial_runs = {c.data.tags["optuna.trial_number"]: c for c in children if c.data.tags["redflow.run_kind"] == "trial"}
    assert sorted(trial_runs) == ["0", "1", "2"]
    pruned_curve = client.get_metric_history(trial_runs["2"].info.run_id, "epoch/validation_accuracy")
    assert trial_runs["2"].data.tags["optuna.state"] == "pruned" and [m.step for m in pruned_curve] == [1]
    assert len(client.get_metric_history(trial_runs["0"].info.run_id, "epoch/validation_accuracy")) == 2

    # the untuned task stayed at the majority class: flagged, whatever its method
    noise = summary["noise"]
    assert noise["status"] == "trained" and noise["learned"] is False
    assert noise["note"].startswith("did not learn") and noise["why"].startswith("did not learn")
    markdown = summary_markdown(load_config(cfg_path), summary, "sqlite:///x")
    assert "did not learn" in markdown and "#2 learning_rate=1e-06: pruned" in markdown
    artifact = _latest_artifact("tune-test-sentiment")  # the tune subflow's own artifact: every trial
    assert "| trial | state | learning_rate |" in artifact and "| 2 | pruned | 1e-06 |" in artifact

    # night 2: same inputs, same tune block: unchanged, no new study, nothing registered
    again = retrain(config=str(cfg_path))["sentiment"]
    assert again["status"] == "unchanged" and again["version"] == 1

    # night 3: more data -> a new study whose first trial reuses v1's best values; 2 trials at once in threads
    best_lr = trials[best]["params"]["learning_rate"]
    tasks[0] = {**tasks[0], "data": _keyword_csv(tmp_path / "reviews.csv", n=144),
                "tune": {**tune, "trials": 2, "parallel": 2}}
    cfg_path = write_retrain_config(tmp_path / "tuned.yaml", minilm_path, tmp_path / "runs", tasks[:1],
                                    defaults=DEFAULTS)
    night3 = retrain(config=str(cfg_path))["sentiment"]
    assert night3["status"] == "trained" and night3["version"] == 2
    # the config diff names what changed in the search (the version records the recipe it hashed, tune included)
    assert "tune.trials 3 -> 2" in night3["why"] and "tune.pruner" not in night3["why"], night3["why"]
    study = _study(cfg_path, night3["tuning"]["study"])
    first = study.trials[0]
    assert first.params == {"learning_rate": pytest.approx(best_lr)} and first.user_attrs["source"] == "v1's values"
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]  # the budget: 2, queue trimmed to it
    assert night3["tuning"]["study"] != row["tuning"]["study"]


def test_a_study_killed_mid_trial_resumes_without_redoing_finished_trials(tmp_path, tiny_checkpoints):
    """A real SIGKILL while trial 1 saves its first checkpoint. The next retrain (trials in Dask worker
    processes) resumes the study: trial 0 is not trained again, trial 1 is asked again with its values and
    continues from that checkpoint, and the budget of 3 counts what the killed run finished."""
    import os
    import subprocess
    import sys
    import textwrap

    from flows.retrain import retrain
    from tasks.training import TrainResult

    tune = {"trials": 3, "parallel": 1, "pruner": "none", "learning_rate": [1e-3, 1e-1], "start_at_config": False,
            "first_trials": [{"learning_rate": 1e-2}, {"learning_rate": 3e-2}]}
    cfg_path = write_retrain_config(tmp_path / "crash.yaml", tiny_checkpoints["bert"], tmp_path / "runs",
                                    [{"name": "kw", "data": _keyword_csv(tmp_path / "kw.csv", n=96), "tune": tune}],
                                    defaults={**DEFAULTS, "epochs": 2}, task_runner="dask")
    script = textwrap.dedent(f"""
        import os, signal
        from transformers import TrainerCallback
        from flows.config import load_config
        from flows import steps, tuning
        from tasks.tuning.study import run_study_in_threads

        class KillTrial1(TrainerCallback):
            def __init__(self, number):
                self.number = number
            def on_save(self, args, state, control, **kwargs):
                if self.number == 1:
                    os.kill(os.getpid(), signal.SIGKILL)

        cfg = load_config({str(cfg_path)!r})
        task = cfg.tasks[0]
        data = steps.prepare_step(cfg, task)
        plan = steps.plan_step(cfg, task, data)
        opened, parent = tuning.open_step(cfg, task, data, plan)
        run_study_in_threads(
            opened, lambda n, p: tuning.trial_step(cfg, task, data, opened.ref, n, p, "killed", [KillTrial1(n)]),
            on_told=lambda n, outcome: tuning.log_told(cfg, task, opened, parent, n, outcome))
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "REDFLOW_PROGRESS": "0"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    killed = _study(cfg_path, load_config(cfg_path).name + ".kw." + _study_digest(cfg_path))
    assert [t.state.name for t in killed.trials] == ["COMPLETE", "RUNNING"]
    first_result = Path(killed.trials[0].user_attrs["result"])
    trained_at = first_result.stat().st_mtime_ns

    row = retrain(config=str(cfg_path))["kw"]
    assert row["status"] == "trained" and row["version"] == 1
    study = _study(cfg_path, row["tuning"]["study"])
    states = [(t.number, t.state.name, t.user_attrs.get("crashed", False), t.user_attrs.get("retry_of"))
              for t in study.trials]
    assert states[:3] == [(0, "COMPLETE", False, None), (1, "FAIL", True, None), (2, "COMPLETE", False, 1)]
    assert len(states) == 4 and states[3][1] == "COMPLETE"  # budget 3: trials 0, 2 and 3
    assert first_result.stat().st_mtime_ns == trained_at  # trial 0 was not trained again
    retried = TrainResult.load(study.trials[2].user_attrs["result"])
    per_epoch = retried.global_step // 2
    assert retried.resumed_from and retried.resumed_from.endswith(f"checkpoint-{per_epoch}")
    assert retried.steps_trained == per_epoch and study.trials[2].params == study.trials[1].params
    assert "resuming study" in row["why"] and "trial 1 was running when its process died" in row["why"]
    client = _client(cfg_path)
    trial_runs = client.search_runs([client.get_experiment_by_name("redflow-test").experiment_id],
                                    filter_string="tags.`redflow.run_kind` = 'trial'")
    assert sorted(r.data.tags["optuna.trial_number"] for r in trial_runs) == ["0", "2", "3"]


def _study_digest(cfg_path) -> str:
    from flows import steps

    cfg = load_config(cfg_path)
    task = cfg.tasks[0]
    data = steps.prepare_step(cfg, task)
    from tasks.training import training_identity

    identity = training_identity(data, cfg.train_config(task), cache_dir=Path(cfg.runs_dir) / "cache" / "base")
    from tasks.tuning.study import study_name

    return study_name("x", identity.to_dict()).split(".", 1)[1]


# ---- the tune block, the identity and the floors (no training) -------------------------------------------
def test_a_bad_tune_block_is_a_config_error_naming_its_yaml_path(tmp_path):
    import yaml

    from flows.config import ConfigError

    def load(tasks, defaults=None):
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump({"base_model": "minilm", "defaults": defaults or {"method": "red"},
                                        "tasks": [{"name": f"t{i}", "data": {"source": "synthetic", "task": "topic",
                                                                             "path": str(tmp_path)}, **t}
                                                  for i, t in enumerate(tasks)]}))
        return load_config(path)

    with pytest.raises(ConfigError) as err:
        load([{"tune": {"trails": 4}}, {"train": {"tune": {"learning_rate": [1e-2, 1e-4]}}},
              {"tune": {"lora_r": [4, 8]}}, {"train": {"method": "head"}}])
    text = str(err.value)
    assert "tasks.0.tune.trails: Extra inputs are not permitted (known fields: trials, timeout" in text
    assert "tasks.1.train.tune.learning_rate: learning_rate must be [low, high] with low < high" in text
    assert "tasks.2.tune: lora_r searches LoRA's rank, but the method is 'red'" in text
    with pytest.raises(ConfigError, match=r"tasks.0.train.method: 'head' .* is a floor"):
        load([{"train": {"method": "head"}}])
    with pytest.raises(ConfigError, match=r"defaults.tune.pruner: Input should be 'median'"):
        load([{}], defaults={"tune": {"pruner": "hyperband"}})
    cfg = load([{"tune": {"trials": 2}}, {"tune": False}], defaults={"tune": {"trials": 5, "sampler": "qmc"}})
    first, second = (cfg.train_config(t).tune for t in cfg.tasks)
    assert (first.trials, first.sampler) == (2, "qmc") and second is None  # merged key by key; false opts out
    cfg = load([{"tune": True}, {"tune": {}}, {}])  # true or {}: the default search
    assert [getattr(cfg.train_config(t).tune, "trials", None) for t in cfg.tasks] == [8, 8, None]
    cfg = load([{"train": {"tune": False}}, {}], defaults={"method": "red", "tune": {"trials": 3}})
    assert [getattr(cfg.train_config(t).tune, "trials", None) for t in cfg.tasks] == [None, 3]
    for bad in ("yes", 1):
        with pytest.raises(ConfigError, match=r"tasks.0.tune"):
            load([{"tune": bad}])
    with pytest.raises(ConfigError, match=r"tune"):
        load([{}], defaults={"method": "red", "tune": "yes"})
    # a tuned task trains alone: a config-wide co_train leaves it out, naming a group on it is an error
    cfg = load([{"tune": {"trials": 2}}, {}, {}], defaults={"method": "red"})
    cfg = cfg.model_copy(update={"co_train": True})
    assert [cfg.co_train_group(t) for t in cfg.tasks] == [None, "default", "default"]
    with pytest.raises(ConfigError, match=r"tasks.0.co_train: a tuned task trains alone .* set tune: false"):
        load([{"tune": {"trials": 2}, "co_train": "g"}, {"co_train": "g"}])


def test_the_tune_block_is_part_of_the_training_identity_but_parallelism_is_not():
    from tasks.training import TrainConfig

    base = TrainConfig(model="m", learning_rate=1e-2)
    tuned = TrainConfig(**{**base.model_dump(), "tune": {"trials": 4}})
    assert "tune" not in base.recipe("sst2")  # untuned identities are what they were before tuning existed
    assert tuned.recipe("sst2")["tune"]["trials"] == 4
    assert TrainConfig(**{**base.model_dump(), "tune": {"trials": 5}}).recipe("sst2") != tuned.recipe("sst2")
    assert TrainConfig(**{**base.model_dump(), "tune": {"trials": 4, "parallel": 8}}).recipe("sst2") == \
        tuned.recipe("sst2")
    space = tuned.tune.space(tuned.resolved("sst2"), "red")  # default: a decade either side of the configured rate
    assert (space["learning_rate"].low, space["learning_rate"].high, space["learning_rate"].log) == \
        (pytest.approx(1e-3), pytest.approx(1e-1), True)
    from tasks.training import train

    with pytest.raises(ValueError, match="this config has a tune block"):  # a search is never trained as one run
        train(None, tuned, "/nonexistent")


def test_floors_are_what_a_constant_answer_scores():
    from tasks.training.floors import learned, majority_scores

    labels = [1] * 68 + [0] * 32  # MRPC-like: 68 % equivalent
    assert majority_scores(labels, ["accuracy", "f1"]) == pytest.approx({"accuracy": 0.68, "f1": 2 * .68 / 1.68})
    assert majority_scores(labels, ["mcc"]) == {"mcc": 0.0}
    assert majority_scores(labels, ["accuracy"], predict=0) == {"accuracy": pytest.approx(0.32)}
    assert majority_scores([0.5, 3.0], ["pearson", "spearman"], task_type="regression") == {"pearson": 0.0,
                                                                                            "spearman": 0.0}
    assert majority_scores(["x"], ["accuracy"], task_type="causal_lm") is None
    assert learned([0.68, 0.689], 0.68) is False and learned([0.5, 0.70], 0.68) is True
    assert learned([2.0, 1.5], 2.0, higher_is_better=False) is True and learned([0.7], None) is None


def test_a_study_whose_every_trial_failed_is_not_resumed_and_a_twin_run_is_busy(tmp_path):
    """All of the budget failed (diverged, out of memory): the next night starts a new study that trains
    again, instead of resuming one with nothing left to run. A second run of the same inputs while the
    first searches is busy, as a twin training is (tasks.lifecycle.attempts)."""
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState

    from tasks.tuning.space import TuneConfig
    from tasks.tuning.study import open_study, storage_url

    tune, space = TuneConfig(trials=2), {"learning_rate": FloatDistribution(1e-4, 1e-1, log=True)}

    def opened():
        return open_study(storage_url(tmp_path), "cfg.task.abc", tune, space, direction="maximize",
                          metric="accuracy", folder=tmp_path / "tune")

    first = opened()
    for _ in range(2):
        first.study.tell(first.study.ask(space), state=TrialState.FAIL)
    first.close()  # the run ended in a failure, never finish()ed
    second = opened()
    assert second.study.study_name == "cfg.task.abc#2" and not second.resumed
    assert "study cfg.task.abc used its 2 trials without one that finished: starting a new study" in second.notes
    second.study.tell(second.study.ask(space), 0.7)
    second.close()
    third = opened()  # a study with a finished trial and budget left is resumed as before
    assert third.study.study_name == "cfg.task.abc#2" and third.resumed
    from tasks.lifecycle.attempts import AttemptBusy

    with pytest.raises(AttemptBusy, match=r"study cfg.task.abc#2 of the same inputs is being run by another live "
                                          r"process"):
        opened()  # a twin run of the same inputs (another schedule, a manual run): busy, not a second version
    third.close()


@pytest.mark.parametrize("earlier", ["complete", "fail"])
@pytest.mark.parametrize("sampler", ["random", "tpe", "qmc"])
def test_a_resumed_study_never_samples_the_values_of_an_earlier_trial_again(tmp_path, sampler, earlier):
    """A run asks 2 trials of a 5-trial study, tells them (both finished, or both failed: diverged), then dies.
    The next run resumes the study: its 3 new trials must all differ from the 2 earlier ones (a sampler rebuilt
    with the same seed used to start its stream over and ask trial 0's values again; QMC falls back to such a
    stream until a trial finishes). The first run stays reproducible: the same seed asks the same first trials;
    and QMC's resumed trials continue its sequence exactly as an uninterrupted study would have."""
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState

    from tasks.tuning.space import TuneConfig
    from tasks.tuning.study import TrialOutcome, open_study, run_study_in_threads, storage_url

    tune = TuneConfig(trials=5, sampler=sampler, seed=3, pruner="none")
    space = {"learning_rate": FloatDistribution(1e-4, 1e-1, log=True),
             "warmup_ratio": FloatDistribution(0.0, 0.2)}

    def opened(root: Path):
        return open_study(storage_url(root), "cfg.task.abc", tune, space, direction="maximize", metric="accuracy",
                          folder=root / "tune")

    def score(number: int, params: dict) -> TrialOutcome:  # a smooth objective with one best rate
        value = -abs(math.log10(params["learning_rate"]) + 2) - params["warmup_ratio"]
        return TrialOutcome(number, params, "complete", value=value)

    def first_run(study) -> None:  # two trials asked and told, as the run that died told them
        for _ in range(2):
            trial = study.ask(space)
            if earlier == "complete":
                study.tell(trial, score(trial.number, trial.params).value)
            else:
                study.tell(trial, state=TrialState.FAIL)

    killed = opened(tmp_path / "a")
    first_run(killed.study)
    killed.close()  # the process died here: the study is not finished
    before = [t.params for t in killed.study.trials]

    resumed = opened(tmp_path / "a")
    assert resumed.resumed and resumed.remaining() == 3
    run_study_in_threads(resumed, score)
    resumed.close()
    after = [t.params for t in resumed.study.trials[2:]]
    assert len(after) == 3
    assert not [p for p in after if p in before], f"{sampler} asked an earlier trial's values again"

    # the same seed in another storage, uninterrupted: the same first trials (a first run is reproducible)
    uninterrupted = opened(tmp_path / "b")
    first_run(uninterrupted.study)
    run_study_in_threads(uninterrupted, score)
    uninterrupted.close()
    assert [t.params for t in uninterrupted.study.trials[:2]] == before
    if sampler == "qmc" and earlier == "complete":  # a sequence: resuming continues it rather than restarting it
        assert [t.params for t in uninterrupted.study.trials] == before + after


def test_a_finished_search_whose_run_died_before_registering_is_registered_without_running_a_trial(
        tmp_path, tiny_checkpoints):
    """The study runs to its end, then the run dies before evaluate/register (here: the tune subflow ran alone).
    The next retrain of the same inputs reuses that finished study: its best trial's edit is evaluated,
    registered and gated, and no trial runs again (the storage and the nested MLflow runs still hold 2 trials,
    no study ``#2`` is opened, the best trial's result is not rewritten). Once registered, a forced retrain
    searches afresh in a new study ``#2``."""
    import optuna

    from flows import steps
    from flows.retrain import retrain
    from flows.tuning import tune_flow
    from tasks.tuning.study import storage_url

    tune = {"trials": 2, "parallel": 1, "pruner": "none", "learning_rate": [1e-3, 1e-1], "start_at_config": False,
            "first_trials": [{"learning_rate": 1e-2}, {"learning_rate": 3e-2}]}
    cfg_path = write_retrain_config(tmp_path / "died.yaml", tiny_checkpoints["bert"], tmp_path / "runs",
                                    [{"name": "kw", "data": _keyword_csv(tmp_path / "kw.csv", n=96), "tune": tune}],
                                    defaults={**DEFAULTS, "epochs": 1})
    cfg = load_config(cfg_path)
    task = cfg.tasks[0]
    data = steps.prepare_step(cfg, task)
    plan = steps.plan_step(cfg, task, data)
    tuned = tune_flow(cfg, task, plan, "died")  # the study finishes; the run dies before evaluate/register
    name = tuned.tuning["study"]
    storage = storage_url(cfg.runs_dir)
    best = _study(cfg_path, name).trials[tuned.tuning["best_trial"]]
    best_result = Path(best.user_attrs["result"])
    trained_at = best_result.stat().st_mtime_ns
    client = _client(cfg_path)
    experiment_id = client.get_experiment_by_name("redflow-test").experiment_id

    def trial_runs() -> list[str]:
        return sorted(r.data.tags["optuna.trial_number"] for r in client.search_runs(
            [experiment_id], filter_string="tags.`redflow.run_kind` = 'trial'"))

    assert trial_runs() == ["0", "1"] and not client.search_model_versions("name='red-kw'")

    row = retrain(config=str(cfg_path))["kw"]
    assert row["status"] == "trained" and row["version"] == 1 and row["steps_trained"] == 0
    assert row["tuning"]["study"] == name and row["tuning"]["best_trial"] == best.number
    assert optuna.get_all_study_names(storage) == [name]  # no study #2
    assert len(_study(cfg_path, name).trials) == 2 and trial_runs() == ["0", "1"]  # no trial ran again
    assert best_result.stat().st_mtime_ns == trained_at
    assert f"reusing finished study {name}" in row["why"], row["why"]
    registered = client.get_run(client.get_model_version("red-kw", "1").run_id)
    assert float(registered.data.params["learning_rate"]) == pytest.approx(best.params["learning_rate"])
    assert registered.data.tags["redflow.tune.study"] == name

    # registered: the same inputs are unchanged; forced, they are searched again in a new study
    assert retrain(config=str(cfg_path))["kw"]["status"] == "unchanged"
    forced = retrain(config=str(cfg_path), force=True)["kw"]
    assert forced["status"] == "trained" and forced["version"] == 2 and forced["tuning"]["study"] == f"{name}#2"
    assert len(_study(cfg_path, f"{name}#2").trials) == 2 and trial_runs() == ["0", "0", "1", "1"]
