"""``docs/configuration.md``, written from the config models so the reference cannot drift from the code.

Every field of the retrain config and of each model nested in it (the task's data, the training settings that
``defaults`` and ``tasks[].train`` hold, the edit, the search, the gate, co-training) is one table row: its name,
type, default and description (``Field(description=...)``). The sections follow the YAML a user writes.
:func:`render` returns the page; ``python -m flows.config_docs`` (or ``redflow config docs --write``) writes it;
``tests/test_config_docs.py`` fails when the committed page differs. :func:`json_schema` is what
``redflow config schema`` prints for editors.

A model reachable from :class:`~flows.config.RetrainConfig` that no section documents is an error
(:func:`missing_sections`), so a new nested block cannot be left out of the page silently.
"""
from __future__ import annotations

import json
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from annotated_types import Ge, Gt, Le, Lt, MaxLen, MinLen
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from red.config import EditConfig
from tasks.data.spec import DataSpec, SyntheticOptions
from tasks.training.config import TrainConfig
from tasks.training.cotrain_settings import CoTrainConfig
from tasks.tuning.space import TuneConfig

from .config import Promotion, Resources, RetrainConfig, TaskSpec

#: Where the page lives in a checkout, and the command that rewrites it (named by the staleness test).
PAGE = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
COMMAND = "python -m flows.config_docs"


@dataclass(frozen=True)
class Section:
    """One table of the page: the YAML paths where ``model``'s fields are written, and what the block is for."""

    title: str
    paths: tuple[str, ...]
    model: type[BaseModel]
    intro: str


SECTIONS: tuple[Section, ...] = (
    Section("Top level", ("(top level)",), RetrainConfig,
            "The file `redflow retrain CONFIG` reads. Relative paths are taken from the current directory."),
    Section("Tasks", ("tasks[]",), TaskSpec,
            "One entry per task: its data, its training overrides, its evaluation suites and its gate."),
    Section("Data", ("tasks[].data",), DataSpec,
            "What a task trains and is scored on. GLUE keeps the official train split and halves the official dev "
            "set into validation and test; other sources split by a seeded hash of each row's text, so appended "
            "rows never move an existing row between splits (see [lifecycle.md](lifecycle.md#splits-that-do-not-"
            "move))."),
    Section("Generated data", ("tasks[].data.synthetic",), SyntheticOptions,
            "Only for `source: synthetic` (the demo's tasks)."),
    Section("Training", ("defaults", "tasks[].train"), TrainConfig,
            "`defaults` applies to every task, a task's `train` overrides it field by field (`edit` and `tune` "
            "are merged key by key). A field left unset takes the `preset`'s value, then the default the "
            "description names. `model` and `revision` come from the top level's `base_model` and `revision`. "
            "The resolved values are part of the training's identity (changing one retrains the task), except "
            "`logging_steps`, `eval_batch_size`, `resume`, the LoRA fields of other methods and `tune.parallel`."),
    Section("Edit", ("defaults.edit", "tasks[].train.edit"), EditConfig,
            "How an edit method (red, loreft, direft, nodireft) attaches to the frozen base model."),
    Section("Search", ("defaults.tune", "tasks[].tune", "tasks[].train.tune"), TuneConfig,
            "An Optuna search instead of one training (see [lifecycle.md](lifecycle.md#tuning-a-learning-rate-"
            "search-instead-of-one-training)). `tune: true` is the default search; `tune: false` on a task turns "
            "a `defaults.tune` search off for it. Ranges are `[low, high]`."),
    Section("Promotion", ("promotion", "tasks[].promotion"), Promotion,
            "The gate: the new version (challenger) and production (champion) are scored on the same rows in the "
            "same run, and production moves only on the paired difference (see [lifecycle.md](lifecycle.md#the-"
            "gate-champion-vs-challenger-on-the-same-rows)). A task's block is merged key by key over the top "
            "level's."),
    Section("Resources", ("defaults.resources", "tasks[].resources"), Resources,
            "What one training asks the cluster for; a task's block is merged key by key over `defaults`'. The "
            "task runner's engine honours it: Ray gets `num_gpus`, `num_cpus` and `memory` and sets each training's "
            "`CUDA_VISIBLE_DEVICES` to the GPUs it assigned; Dask runs the training on a worker that declares a "
            "`GPU` resource (the local cluster redflow starts gives each of its first workers its own GPUs). The "
            "threads runner ignores it (one process: its trainings take turns). Not part of a training's identity "
            "(see [lifecycle.md](lifecycle.md#gpus-and-other-resources))."),
    Section("Co-training", ("co_train",), CoTrainConfig,
            "`co_train: true` trains the tasks that need training in one pass over one copy of the base; these "
            "are the mixing settings when `co_train` is a mapping (see [lifecycle.md](lifecycle.md#co-training-"
            "one-base-many-tasks-in-one-pass))."),
)

#: Fields typed as free mappings that are read as a model: (model, field) -> the model they hold.
READ_AS: dict[tuple[type[BaseModel], str], type[BaseModel]] = {
    (RetrainConfig, "defaults"): TrainConfig,
    (TaskSpec, "train"): TrainConfig,
    (TaskSpec, "tune"): TuneConfig,
    (TrainConfig, "edit"): EditConfig,
}

HEADER = """# Configuration reference

<!-- Generated from the config models by `{command}`; do not edit by hand. -->

A retrain config is one YAML file (`redflow retrain CONFIG`; [`configs/demo.yaml`](../configs/demo.yaml) is an
example). It is checked completely before anything runs: an unknown field, a wrong type or a value out of range
fails at once with the field's YAML path and the fix (`tasks.0.train.learning_rate: Input should be greater than
or equal to 0`), exit code 2.

```yaml
name: nightly
base_model: minilm
defaults:                # training settings for every task
  epochs: 3
  edit: {{position: ffn}}
promotion: {{margin: 0.005}}
tasks:
  - name: sentiment
    data: {{source: csv, path: data/reviews.csv, text_columns: [review], label_column: stars}}
    train: {{learning_rate: 0.005}}   # this task's overrides
```

## Checking a config in your editor

`redflow config schema` prints the config's JSON schema. Save it once and name it on the first line of a config;
editors with the YAML language server (VS Code's YAML extension, Neovim, Helix, ...) then complete field names
and flag unknown fields and wrong types as you type:

```bash
redflow config schema > redflow.schema.json
```

```yaml
# yaml-language-server: $schema=./redflow.schema.json
name: nightly
base_model: minilm
```

The path is relative to the YAML file (a URL works too). The schema describes every section below; what it
cannot say (a co-training group's shared settings, a gate metric the task never produces, an edit setting for
the wrong method) is checked when the config is loaded, and `redflow retrain` refuses such a config before
anything runs. Regenerate the schema after upgrading redflow.

## Sections

{toc}
"""


def _type(annotation: Any) -> str:
    """A type as a user writes it in YAML: ``int or null``, ``one of `a`, `b```, ``list of string``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type(args[0])
    if origin in (typing.Union, types.UnionType):
        parts = [_type(a) for a in args if a is not type(None)]
        return " or ".join(parts + (["null"] if type(None) in args else []))
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{json.dumps(a)}`" if not isinstance(a, str) else f"`{a}`" for a in args)
    if origin in (list, tuple):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"[{', '.join(_type(a) for a in args)}]"
        return f"list of {_type(args[0])}" if args else "list"
    if origin is dict:
        return "mapping" if not args or args[1] is Any else f"mapping of {_type(args[0])} to {_type(args[1])}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        section = _section_of(annotation)
        return f"mapping ([{section.title}](#{_anchor(section.title)}))" if section else "mapping"
    names = {str: "string", int: "integer", float: "number", bool: "boolean", Path: "path", type(None): "null"}
    if annotation in names:
        return names[annotation]
    if annotation is Any:
        return "any"
    return getattr(annotation, "__name__", str(annotation))


def _constraints(field: FieldInfo) -> str:
    """Range checks of a field (``>= 1``, ``< 1``, ``at least 1 item``), as pydantic enforces them."""
    out = []
    for item in field.metadata:
        for cls, sign in ((Ge, ">="), (Gt, ">"), (Le, "<="), (Lt, "<")):
            if isinstance(item, cls):
                out.append(f"{sign} {getattr(item, next(iter(cls.__dataclass_fields__)))}")
        if isinstance(item, MinLen):
            out.append(f"at least {item.min_length} item{'s' if item.min_length != 1 else ''}")
        if isinstance(item, MaxLen):
            out.append(f"at most {item.max_length} items")
        pattern = getattr(item, "pattern", None)
        if isinstance(pattern, str):
            out.append(f"matches `{pattern}`")
    return ", ".join(out)


def _default(field: FieldInfo) -> str:
    """The default as YAML would spell it, ``required`` when there is none."""
    if field.is_required():
        return "required"
    value = field.default_factory() if field.default_factory is not None else field.default  # type: ignore[call-arg]
    if value is PydanticUndefined:
        return "required"
    if isinstance(value, BaseModel):
        return "`{}` (every default)" if not value.model_dump(exclude_defaults=True) else \
            f"`{json.dumps(value.model_dump(mode='json'))}`"
    if isinstance(value, Path):
        return f"`{value}`"
    return f"`{json.dumps(value)}`"


def _cell(text: str) -> str:
    """One table cell: one line, with the characters Markdown would read as markup escaped."""
    text = " ".join(text.split()).replace("|", "\\|").replace("*", "\\*")
    return text.replace("<", "&lt;").replace(">", "&gt;")


def _anchor(title: str) -> str:
    return title.lower().replace(" ", "-")


def _section_of(model: type[BaseModel]) -> Section | None:
    return next((s for s in SECTIONS if s.model is model), None)


def table(model: type[BaseModel]) -> str:
    """One row per field of ``model``: name, type (with range checks), default, description."""
    rows = ["| field | type | default | meaning |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        kind = _type(field.annotation)
        held = READ_AS.get((model, name))
        if held is not None:
            section = _section_of(held)
            kind = kind.replace("mapping", f"mapping ([{section.title}](#{_anchor(section.title)}))", 1) \
                if section else kind
        limits = _constraints(field)
        if limits:
            kind += f" ({limits})"
        rows.append(f"| `{name}` | {_cell(kind)} | {_cell(_default(field))} | {_cell(field.description or '')} |")
    return "\n".join(rows)


def nested_models(model: type[BaseModel]) -> set[type[BaseModel]]:
    """``model`` and every pydantic model its fields' annotations name, recursively."""
    found: set[type[BaseModel]] = set()
    todo = [model]
    while todo:
        current = todo.pop()
        if current in found:
            continue
        found.add(current)
        for field in current.model_fields.values():
            stack = [field.annotation]
            while stack:
                annotation = stack.pop()
                if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                    todo.append(annotation)
                stack.extend(typing.get_args(annotation))
    return found


def documented_models() -> set[type[BaseModel]]:
    """Every model a retrain config holds: those its annotations name, and those its free mappings
    (``defaults``, ``train``, ``edit``, ``tune``) are read as."""
    return set().union(*(nested_models(m) for m in (RetrainConfig, *READ_AS.values())))


def missing_sections() -> list[str]:
    """Names of the models a retrain config holds that no :data:`SECTIONS` entry documents."""
    covered = {s.model for s in SECTIONS}
    return sorted(m.__name__ for m in documented_models() - covered)


def render() -> str:
    """The whole page (Markdown), ending in a newline. ValueError when a nested model has no section."""
    missing = missing_sections()
    if missing:
        raise ValueError(f"config models without a section in flows/config_docs.py SECTIONS: {missing}. Fix: add a "
                         "Section for each, at the YAML path where a user writes it")
    toc = "\n".join(f"- [{s.title}](#{_anchor(s.title)}): {', '.join(f'`{p}`' for p in s.paths)}" for s in SECTIONS)
    parts = [HEADER.format(command=COMMAND, toc=toc)]
    for s in SECTIONS:
        where = ", ".join(f"`{p}`" for p in s.paths)
        parts.append(f"## {s.title}\n\nWritten at {where}. {s.intro}\n\n{table(s.model)}\n")
    return "\n".join(parts)


def json_schema() -> dict[str, Any]:
    """The retrain config's JSON schema (``RetrainConfig.model_json_schema()``), for editors.

    The free mappings a config reads as models (:data:`READ_AS`: ``defaults``, ``tasks[].train``, ``edit``,
    ``tune``) are described by those models' schemas, so an editor checks them too; ``model`` is not required
    there (the top level's ``base_model`` sets it) and ``tune`` may also be ``true`` or ``false``.
    """
    ref = "#/$defs/{model}"
    schema = RetrainConfig.model_json_schema(ref_template=ref)
    schema["title"] = "redflow retrain config"
    defs = schema.setdefault("$defs", {})
    for model in dict.fromkeys(READ_AS.values()):
        sub = model.model_json_schema(ref_template=ref)
        defs.update(sub.pop("$defs", {}))
        defs[model.__name__] = sub
    train = defs[TrainConfig.__name__]
    train["required"] = [name for name in train.get("required", []) if name != "model"]
    if not train["required"]:
        del train["required"]
    switch = {"anyOf": [{"$ref": ref.format(model=TuneConfig.__name__)}, {"type": "boolean"}, {"type": "null"}]}
    for (model, name), held in READ_AS.items():
        where = schema if model is RetrainConfig else defs[model.__name__]
        described = {"description": model.model_fields[name].description}
        where["properties"][name] = {**(switch if held is TuneConfig else
                                        {"$ref": ref.format(model=held.__name__)}), **described}
    train["properties"]["tune"] = {**switch, "description": TrainConfig.model_fields["tune"].description}
    # defaults holds the training fields and, beside them, every training's resources (not a TrainConfig field)
    defaults = json.loads(json.dumps(train))
    defaults["properties"]["resources"] = {"$ref": ref.format(model=Resources.__name__),
                                           "description": "What every training asks the cluster for."}
    defs["Defaults"] = defaults
    schema["properties"]["defaults"]["$ref"] = ref.format(model="Defaults")
    return schema


def main(argv: list[str] | None = None) -> int:
    """Write the page (``python -m flows.config_docs [PATH]``, default ``docs/configuration.md``); print where."""
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else PAGE
    path.write_text(render())
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
