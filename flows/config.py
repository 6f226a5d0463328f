"""The retraining config: which tasks, on which base model, with which method, and how to promote.

Validated with pydantic so a bad YAML fails before anything runs, with the
field's path in the message (``tasks.1.train.learning_rate: Input should be a valid number``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, StrictBool, StringConstraints, ValidationError, field_validator,
                      model_validator)

from red.config import EditConfig
from registry.policy import PromotionPolicy
from tasks.data.glue_tasks import GLUE_TASKS
from tasks.data.spec import DataSpec
from tasks.data.synthetic import SYNTHETIC_TASKS
from tasks.evaluate.suite_specs import check_gate_metric
from tasks.training.config import EDIT_METHODS, TrainConfig
from tasks.training.cotrain_settings import CoTrainConfig, shared_settings
from tasks.training.model_names import missing_model_folder, resolve_model
from tasks.tuning.space import TuneConfig

from .config_yaml import ConfigTextError, read_yaml


class ConfigError(ValueError):
    """A retrain config that cannot be used; the message names the field and the fix."""


class Promotion(BaseModel):
    """The gate: champion (production) vs challenger (the new version), scored on the same rows in the same run."""

    model_config = ConfigDict(extra="forbid")
    metric: str | None = Field(default=None, description="Defaults to the task's primary metric; any metric of "
                               "the task's test rows (accuracy, f1, mcc, pearson, spearman, loss, perplexity) or "
                               "of its evaluation suites ('<suite or lm-eval task>/<metric>').")
    margin: float = Field(default=0.0, ge=0.0, description="How much the candidate must beat production by, on "
                          "the paired difference over the same rows.")
    minimum: float | None = Field(default=None, description="What a first version must reach to go to production.")
    higher_is_better: bool | None = Field(default=None, description="Default: from the metric (losses and "
                                          "perplexities are lower-is-better).")
    require_significant: bool = Field(default=False, description="Also require the bootstrap confidence "
                                      "interval of the improvement to lie above 0.")
    confidence: float = Field(default=0.95, ge=0.5, lt=1.0, description="Of the bootstrap interval.")
    approval: Literal["none", "required"] = Field(default="none", description="'required': a version that "
                                                  "passes the gate stays at 'candidate', awaiting approval, until a "
                                                  "person runs `redflow approve MODEL VERSION` (or `redflow reject`, "
                                                  "or the approve-version deployment); 'none': it goes to production.")

    def policy(self):
        return PromotionPolicy(**self.model_dump())


class Resources(BaseModel):
    """What one training of a task asks the cluster for (``resources:`` on a task or in ``defaults``).

    The engine of the config's ``task_runner`` honours it: Ray gets them as the training's task options
    (``num_gpus``, ``num_cpus``, ``memory``) and sets ``CUDA_VISIBLE_DEVICES`` to the GPUs it assigned; Dask runs the
    training on a worker that declares a ``GPU`` resource (redflow's local cluster gives each such worker its own
    devices). The threads runner ignores them: one process sees every device, and its trainings take turns anyway
    (``tasks.training.control.trainer_slot``). They are not part of a training's identity: changing them retrains
    nothing.
    """

    model_config = ConfigDict(extra="forbid")
    gpus: float = Field(default=0, ge=0, description="GPUs one training uses: 0 (none), a whole number, or a "
                        "fraction below 1 (to 0.0001) for trainings that share a GPU (Ray only; Dask rounds up).")
    cpus: float | None = Field(default=None, gt=0, description="CPUs one training uses (Ray's num_cpus; null: 1, "
                               "Ray's default). Dask ignores it: each Dask worker runs one step at a time.")
    memory_gb: float | None = Field(default=None, gt=0, description="Memory one training needs, in GiB (Ray's "
                                    "memory, which Ray schedules by but does not enforce). Dask ignores it: its "
                                    "workers' memory_limit decides.")

    @field_validator("gpus")
    @classmethod
    def _gpus_ray_can_schedule(cls, value: float) -> float:
        if value > 1 and value != int(value):
            raise ValueError(f"{value} GPUs: above 1, GPUs come whole (Ray and Dask cannot split a training over "
                             f"part of a GPU). Fix: use {int(value)} or {int(value) + 1}, or a fraction below 1")
        if 0 < value < 1 and round(value, 4) != value:
            raise ValueError(f"{value} GPUs: a fraction of a GPU goes to 0.0001 at most (Ray's precision). "
                             f"Fix: use {round(value, 4) or 0.0001}")
        return value

    def merged_over(self, base: "Resources") -> "Resources":
        """These settings over ``base`` (``defaults.resources``), field by field: a task sets only what differs."""
        return base.model_copy(update=self.model_dump(exclude_unset=True))


class TaskSpec(BaseModel):
    """One task of a retrain: its data, training overrides, evaluation suites and promotion policy."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="The task's name (letters, digits, _ . -): its "
                      "folder, its runs' names and the default registered model red-<name>.")
    data: DataSpec = Field(description="What the task trains and is scored on (see the data section).")
    train: dict[str, Any] = Field(default_factory=dict, description="This task's training settings (TrainConfig "
                                  "fields), each overriding the same field of defaults (edit and tune key by key).")
    evaluate: list[str | dict[str, Any]] = Field(
        default_factory=lambda: ["test"], description="Evaluation suites run on the saved edit: test (the task's "
        "test rows), openllm-v1 or 'lm-eval:<task>[,<task>...]' (lm-eval), or a mapping such as {suite: arc, path: "
        "ARC.jsonl}, {suite: lm-eval, tasks: [...], include_path: DIR} or {suite: alpaca, reference: FILE, judge: "
        "{...}} (tasks/evaluate/suites.py). The gate may use their metrics ('<suite or task>/<metric>').")
    promotion: Promotion | None = Field(default=None, description="This task's gate settings, merged key by key "
                                        "over the top-level promotion.")
    model_name: str | None = Field(default=None, description="Registered model name (default red-<task>).")
    co_train: bool | Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]+$")] | None = Field(
        default=None, description="Co-training: null follows the config's co_train; false trains this task "
        "alone; true joins the default group; a name co-trains it with the tasks of that group name.")
    tune: dict[str, Any] | StrictBool | None = Field(
        default=None, description="tasks.tuning.space.TuneConfig fields: search the learning rate with Optuna (merged key by "
        "key over defaults.tune); true: the default search; false: no search for this task even if defaults has one.")
    resources: Resources | None = Field(default=None, description="What one training of this task asks the "
                                        "cluster for (gpus, cpus, memory_gb), merged key by key over "
                                        "defaults.resources; see the resources section.")


class RetrainConfig(BaseModel):
    """A retrain config (the YAML ``redflow retrain`` reads): base model, store, tasks, training defaults, gate."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(default="retrain", description="The config's name: its training folders are "
                      "<runs_dir>/<name>/<task>/, its versions carry the tag retrain_config=<name> (a night compares "
                      "only with versions of its own config), and it names the Prefect summary artifact.")
    base_model: str = Field(description="Hub name, local folder, or 'minilm' for the packaged MiniLM.")
    revision: str | None = Field(default=None, description="Hub revision (branch, tag or commit) of base_model; "
                                 "null: the default branch. Part of the base model's identity.")
    runs_dir: Path = Field(default=Path("runs"), description="Where training folders, the data/base/version caches, "
                           "the Optuna studies (optuna.db) and the default MLflow store live; relative to the "
                           "current directory.")
    tracking_uri: str | None = Field(default=None, description="The MLflow store: sqlite:///<file>, or a tracking "
                                     "server's http(s):// address. --tracking-uri wins over it; null: "
                                     "$REDFLOW_TRACKING_URI or $MLFLOW_TRACKING_URI, else sqlite:///<runs_dir>/mlflow.db.")
    experiment: str = Field(default="redflow", description="MLflow experiment the training runs are logged to "
                            "(created when missing).")
    task_runner: Literal["threads", "dask", "ray"] = Field(
        default="threads", description="Prefect task runner of the tasks' chains: threads (one process; trainings "
        "take turns), dask (a local cluster of max_workers processes, or $REDFLOW_DASK_ADDRESS) or ray (a local "
        "Ray with max_workers CPUs, or $REDFLOW_RAY_ADDRESS); dask and ray need their extras installed.")
    max_workers: int = Field(default=2, ge=1, description="Tasks (and, by default, tuning trials) run at once: the "
                             "thread pool's size, or the Dask/Ray workers started.")
    keep_attempts: int = Field(default=10, ge=1, description="Training folders kept per task (newest first); "
                               "older finished ones are deleted.")
    retrain_on_dependency_change: StrictBool = Field(
        default=False, description="Retrain a task whose data, config, base model and code are unchanged when "
        "Python, torch, transformers or peft differ from the versions recorded on its latest version (its identity.json). "
        "Off (default): the change is listed in the night's reasons ('recorded, not retraining') and the task "
        "stays unchanged.")
    defaults: dict[str, Any] = Field(default_factory=dict, description="Training settings (TrainConfig fields, "
                                     "with edit and tune) for every task; a task's train overrides them. Its "
                                     "resources (gpus, cpus, memory_gb) are every training's cluster request, which "
                                     "a task's own resources override key by key.")
    promotion: Promotion = Field(default_factory=Promotion, description="The gate for every task (a task's own "
                                 "promotion block overrides it key by key).")
    co_train: bool | CoTrainConfig = Field(
        default=False, description="Train the tasks that need training and share base model and method in one pass "
        "over one copy of the base (tasks.training.cotrain): true, or the mixing settings (temperature, mixing, batch_size, "
        "rows_per_step). Each task is still evaluated, registered and gated on its own.")
    tasks: list[TaskSpec] = Field(min_length=1, description="The tasks to retrain (at least one; names unique).")

    @field_validator("base_model")
    @classmethod
    def _base_model_folder_exists(cls, value: str) -> str:
        problem = missing_model_folder(value)
        if problem:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _check(self) -> "RetrainConfig":
        names = [t.name for t in self.tasks]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"task names must be unique; repeated: {dupes}")
        issues = _resources_issues(self.defaults.get("resources"))
        issues += [issue for i, t in enumerate(self.tasks) for issue in self._task_issues(i, t)]
        issues += [(f"tasks.{i}.co_train", "a tuned task trains alone (its study searches its own "
                    "learning rate); remove co_train from this task or set tune: false on it")
                   for i, t in enumerate(self.tasks) if t.co_train not in (None, False) and t.tune not in (None, False)]
        if issues:  # the merged training and edit configs, validated now rather than mid-run
            raise ConfigIssues(issues)
        groups: dict[str, dict[str, TrainConfig]] = {}
        for t in self.tasks:
            group = self.co_train_group(t)
            if group is not None:
                groups.setdefault(group, {})[t.name] = self.train_config(t)
        for group, configs in groups.items():
            try:
                shared_settings(configs, {t.name: t.data.task or t.name for t in self.tasks if t.name in configs})
            except ValueError as exc:
                raise ValueError(f"co_train group {group!r}: {exc}") from None
        return self

    def co_train_group(self, task: TaskSpec) -> str | None:
        """The co-training group ``task`` belongs to, or None when it trains alone.

        A tuned task (``tune:``) trains alone: its study searches a learning rate for it, which one shared pass over
        several tasks cannot honour. Naming a group on the task itself while tuning it is a config error.
        """
        if task.co_train is False or (task.co_train is None and self.co_train is False):
            return None
        if self._merged(task)["tune"] is not None:
            return None
        return task.co_train if isinstance(task.co_train, str) else "default"

    def co_train_settings(self) -> CoTrainConfig:
        """How co-trained tasks' rows are mixed (the defaults when only tasks name groups)."""
        return self.co_train if isinstance(self.co_train, CoTrainConfig) else CoTrainConfig()

    def _merged(self, task: TaskSpec) -> dict[str, Any]:
        defaults = {k: v for k, v in self.defaults.items() if k != "resources"}  # the cluster's, not the training's
        merged = {"model": resolve_model(self.base_model), "revision": self.revision, **defaults, **task.train}
        edits = {"defaults.edit": self.defaults.get("edit", {}), f"tasks.{task.name}.train.edit": task.train.get("edit", {})}
        odd = [(where, e) for where, e in edits.items() if not isinstance(e, dict)]
        if odd:  # `edit:` left empty, or a list/number: say where rather than fail merging it
            raise ConfigIssues([(where, f"must be a mapping of edit settings (e.g. `edit: {{position: ffn}}`), not {e!r}")
                                for where, e in odd])
        merged["edit"] = {**edits["defaults.edit"], **edits[f"tasks.{task.name}.train.edit"]}
        # true or {}: the default search; false (the task's own, or in its train:) turns a defaults search off
        blocks = [self.defaults.get("tune"), task.train.get("tune"), task.tune]
        tune = {k: v for block in blocks if isinstance(block, dict) for k, v in block.items()}
        wanted = any(block is True or isinstance(block, dict) for block in blocks)
        off = task.tune is False or (task.tune is None and task.train.get("tune") is False)
        merged["tune"] = tune if wanted and not off else None
        bad = [block for block in blocks[:2] if block is not None and not isinstance(block, (bool, dict))]
        if bad:  # e.g. tune: "yes" in defaults: TrainConfig's validation names it
            merged["tune"] = bad[0]
        return merged

    def train_config(self, task: TaskSpec) -> TrainConfig:
        """The task's TrainConfig: base model, then ``defaults``, then the task's ``train`` (``edit`` merged key by key)."""
        try:
            return TrainConfig(**self._merged(task))
        except ValidationError as exc:
            raise ConfigIssues([(self._yaml_path(task, e["loc"]), _msg(e, TrainConfig)) for e in exc.errors()]) from exc

    def _task_issues(self, index: int, task: TaskSpec) -> list[tuple[str, str]]:
        """Problems in task ``index``'s merged training config and its ``edit`` (checked by red.EditConfig)."""
        try:
            tc = TrainConfig(**self._merged(task))
        except ValidationError as exc:
            return [(self._yaml_path(task, e["loc"], index), _msg(e, TrainConfig)) for e in exc.errors()]
        if tc.method == "head":
            return [(self._yaml_path(task, ("method",), index),
                     "'head' (only the task head trained) is a floor for `redflow bench glue`, not a model to "
                     "register; use bitfit, or an edit method")]
        metric = self.promotion_for(task).metric
        if metric:  # a gate metric the task never produces would only fail at night
            try:
                check_gate_metric(metric, task.evaluate, _known_task_type(task))
            except ValueError as exc:
                where = f"tasks.{index}.promotion.metric" if task.promotion and task.promotion.metric \
                    else "promotion.metric"
                return [(where, str(exc))]
        if tc.method not in EDIT_METHODS:
            return []
        edit = dict(tc.edit)
        if edit.get("method", tc.method) != tc.method:
            return [(self._yaml_path(task, ("edit", "method"), index),
                     f"{edit['method']!r} differs from the task's method {tc.method!r}; set `method` under train only")]
        try:
            EditConfig(**{**edit, "method": tc.method})
        except ValidationError as exc:
            return [(self._yaml_path(task, ("edit", *e["loc"]), index), _msg(e, EditConfig)) for e in exc.errors()]
        return []

    def _yaml_path(self, task: TaskSpec, loc: tuple, index: int | None = None) -> str:
        """Where in the YAML a merged TrainConfig field came from: the task's ``train``, else ``defaults``."""
        i = self.tasks.index(task) if index is None else index
        keys = [str(k) for k in loc]
        if keys == ["tune"]:
            if task.tune:
                return f"tasks.{i}.tune"
            return f"tasks.{i}.train.tune" if "tune" in task.train else "defaults.tune"
        if keys and keys[0] == "tune" and len(keys) > 1:
            if keys[1] in (task.tune or {}):
                return ".".join([f"tasks.{i}.tune", *keys[1:]])
            own = keys[1] in (task.train.get("tune") or {})
            return ".".join([f"tasks.{i}.train" if own else "defaults", *keys])
        if keys and keys[0] == "edit" and len(keys) > 1:
            own = keys[1] in (task.train.get("edit") or {})
            where = f"tasks.{i}.train" if own or keys[1] not in (self.defaults.get("edit") or {}) else "defaults"
        else:
            own = bool(keys) and keys[0] in task.train
            where = f"tasks.{i}.train" if own or not keys or keys[0] not in self.defaults else "defaults"
        return ".".join([where, *keys])

    def resources_for(self, task: TaskSpec) -> Resources:
        """What one training of ``task`` asks the cluster for: ``defaults.resources``, then the task's own."""
        base = Resources(**self.defaults.get("resources") or {})
        return base if task.resources is None else task.resources.merged_over(base)

    def promotion_for(self, task: TaskSpec) -> Promotion:
        if task.promotion is None:
            return self.promotion
        return self.promotion.model_copy(update=task.promotion.model_dump(exclude_unset=True))

    def model_name(self, task: TaskSpec) -> str:
        return task.model_name or f"red-{task.name}"


def _resources_issues(raw: Any) -> list[tuple[str, str]]:
    """Problems in ``defaults.resources`` (a task's own ``resources`` is a typed field, checked by pydantic)."""
    if raw is None:
        return []
    if not isinstance(raw, dict):
        return [("defaults.resources", f"must be a mapping such as `resources: {{gpus: 1, cpus: 4, memory_gb: 16}}`, "
                 f"not {raw!r}")]
    try:
        Resources(**raw)
    except ValidationError as exc:
        return [(".".join(["defaults.resources", *(str(k) for k in e["loc"])]), _msg(e, Resources))
                for e in exc.errors()]
    return []


def _known_task_type(task: TaskSpec) -> str | None:
    """The task type a data spec implies before any data is read (None when only the data can tell)."""
    spec = task.data
    if spec.task_type:
        return spec.task_type
    if spec.source in ("alpaca", "ultrafeedback"):
        return "causal_lm"
    if spec.source == "synthetic" and spec.task in SYNTHETIC_TASKS:
        return SYNTHETIC_TASKS[spec.task].task_type
    if spec.source in ("glue", "hub") and spec.task in GLUE_TASKS:
        return GLUE_TASKS[spec.task].task_type
    return None


class ConfigIssues(ValueError):
    """Problems found in merged task settings, each with its YAML path (``tasks.0.train.edit.kind``)."""

    def __init__(self, issues: list[tuple[str, str]]):
        self.issues = list(dict.fromkeys(issues))  # a top-level setting wrong for every task: said once
        super().__init__("; ".join(f"{path}: {msg}" for path, msg in self.issues))


def _msg(error: dict[str, Any], model: type[BaseModel] | None = None) -> str:
    """Pydantic's message without its 'Value error, ' prefix; an unknown field also lists the known ones."""
    msg = str(error["msg"]).removeprefix("Value error, ")
    if model is TrainConfig and tuple(error.get("loc", ()))[:1] == ("tune",):
        model = TuneConfig
    if error.get("type") == "extra_forbidden" and model is not None:
        msg += f" (known fields: {', '.join(model.model_fields)})"
    return msg


def _issues(exc: ValidationError) -> list[tuple[str, str]]:
    """(YAML path, message) per error; errors raised as ConfigIssues by a validator keep their own paths."""
    out: list[tuple[str, str]] = []
    for e in exc.errors():
        inner = (e.get("ctx") or {}).get("error")
        if isinstance(inner, ConfigIssues):
            out += inner.issues
        else:
            out.append((".".join(str(x) for x in e["loc"]) or "(top level)", _msg(e)))
    return out


def _first_error(exc: ValidationError) -> str:
    issues = _issues(exc)
    more = f" (+{len(issues) - 3} more)" if len(issues) > 3 else ""
    return "; ".join(f"{path}: {msg}" for path, msg in issues[:3]) + more


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RetrainConfig:
    """Read and validate a retrain YAML; relative paths in it are taken relative to the current directory."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = read_yaml(path) or {}
    except ConfigTextError as exc:
        raise ConfigError(str(exc)) from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping with base_model and tasks")
    odd = [key for key in raw if not isinstance(key, str)]
    if odd:
        raise ConfigError(f"{path}: top-level key {odd[0]!r} is a {type(odd[0]).__name__}; every key is a field name "
                          "(base_model, tasks, defaults, ...). Fix: correct or quote the key in " + str(path))
    raw.update(overrides or {})
    try:
        return RetrainConfig(**raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_first_error(exc)}. Fix: correct the named field(s) in {path}") from exc
