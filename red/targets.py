"""Find the modules an edit attaches to, from the architecture table or explicit patterns."""
from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from .architectures import ARCHITECTURES, lookup
from .config import EditConfig
from .errors import EditConfigError, UnknownArchitectureError


@dataclass(frozen=True)
class Target:
    name: str          # full module name in the base model
    layer: int | None  # block index used for layer selection
    hidden: int        # width of the output the edit acts on
    conv1d: bool       # weight stored as (in, out)
    position: str      # "ffn", "attn", "block" or "custom" (explicit patterns)


def module_key(name: str) -> str:
    """The key under which a module's edit (or head copy) sits in an ``nn.ModuleDict``: ``a.b.c`` -> ``a__b__c``.

    ModuleDict keys may not contain dots; EditedModel, EditBank and TrainableBank all key by target or
    head name this one way.
    """
    return name.replace(".", "__")


def model_type(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None) or type(model).__name__


def output_width(module: nn.Module) -> int:
    """The size of a module's last output dimension (Linear, Conv1D or a block)."""
    if isinstance(module, nn.Linear):
        return module.out_features
    if type(module).__name__ == "Conv1D":
        return module.weight.shape[1]
    config_width = None
    for attr in ("hidden_size", "d_model", "n_embd"):
        config_width = config_width or getattr(getattr(module, "config", None), attr, None)
    if config_width:
        return int(config_width)
    raise EditConfigError(
        f"cannot tell the output width of {type(module).__name__}; target a Linear/Conv1D layer instead"
    )


def patterns_for(model: nn.Module, config: EditConfig) -> list[tuple[str, str]]:
    """(position, regex) pairs for this model and config."""
    if config.target_modules:
        return [("custom", p) for p in config.target_modules]
    mtype = model_type(model)
    arch = lookup(mtype)
    if arch is None:
        known = ", ".join(sorted(ARCHITECTURES))
        raise UnknownArchitectureError(
            f"architecture {mtype!r} is not in redflow's table (known: {known}). "
            "Pass the modules to edit explicitly, e.g. EditConfig(target_modules=[r'layers\\.(\\d+)\\.mlp\\.down_proj$']) "
            "or `target_modules:` in the YAML config, or add a row to red/architectures.py."
        )
    if config.is_reft:
        return [("block", p) for p in arch.block]
    positions = ("ffn", "attn") if config.position == "ffn+attn" else (config.position,)
    return [(pos, p) for pos in positions for p in getattr(arch, pos)]


def _layer_index(match: re.Match) -> int | None:
    for group in match.groups():
        if group is not None and group.isdigit():
            return int(group)
    digits = re.findall(r"\.(\d+)\.", "." + match.group(0) + ".")
    return int(digits[-1]) if digits else None


def find_targets(model: nn.Module, config: EditConfig) -> list[Target]:
    """Return the modules to edit, in model order, after layer selection."""
    patterns = [(pos, re.compile(p)) for pos, p in patterns_for(model, config)]
    conv1d = bool(getattr(lookup(model_type(model)), "conv1d", False))
    found: list[Target] = []
    for name, module in model.named_modules():
        for position, pattern in patterns:
            match = pattern.search(name)
            if match is None:
                continue
            layer = _layer_index(match)
            if config.wants_layer(layer):
                is_conv1d = type(module).__name__ == "Conv1D" or (conv1d and not isinstance(module, nn.Linear))
                found.append(Target(name=name, layer=layer, hidden=output_width(module) if not config.is_reft
                                    else _block_width(model), conv1d=is_conv1d, position=position))
            break
    if not found:
        raise EditConfigError(
            f"no module of this {model_type(model)!r} model matches {[p.pattern for _, p in patterns]} "
            f"with layers={config.layers} exclude_layers={config.exclude_layers}. Check the patterns against "
            "`[n for n, _ in model.named_modules()]` and the layer indices."
        )
    return found


def _block_width(model: nn.Module) -> int:
    config = model.config
    for attr in ("hidden_size", "d_model", "n_embd", "dim"):
        value = getattr(config, attr, None)
        if value:
            return int(value)
    raise EditConfigError("cannot find the hidden size in the model config (hidden_size/d_model/n_embd)")


def task_head_modules(model: nn.Module) -> list[str]:
    """The top-level modules a task model adds to its backbone (``base_model_prefix``): classifier, pooler, score...

    These are created for the task (DeBERTa's ``pooler`` and ``classifier``, RoBERTa's
    ``classifier``, GPT-2's ``score``...), so they are trained and saved with the edit.
    """
    backbone = getattr(model, "base_model_prefix", "") or ""
    return [n for n, m in model.named_children()
            if n != backbone and any(True for _ in m.parameters())]


def find_head(model: nn.Module, config: EditConfig) -> list[str]:
    """Module names of the task head trained and saved with the edit."""
    if config.head == "none":
        return []
    names = dict(model.named_modules())
    if config.head == "auto":
        cls = type(model).__name__
        if not any(cls.endswith(s) for s in ("ForSequenceClassification", "ForTokenClassification",
                                             "ForQuestionAnswering", "ForMultipleChoice")):
            return []
        return task_head_modules(model)
    missing = [h for h in config.head if h not in names]
    if missing:
        raise EditConfigError(f"head modules {missing} are not in the model; available top-level modules: "
                              f"{[n for n in names if n and '.' not in n]}")
    return list(config.head)
