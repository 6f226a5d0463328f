"""Parameter counts from a config alone: the model is built on the meta device, no weights.

Gives RED's count (2 · width · edited layers) next to LoRA and full fine-tuning,
for hub names (with a network), local checkpoints/config.json files, and the
paper's base models, whose configs are embedded so the counts work offline.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers
from torch import nn

from .architectures import ARCHITECTURES, lookup
from .config import EditConfig
from .errors import UnknownArchitectureError
from .methods.reft.model import count_reft_parameters
from .targets import find_targets, model_type

# The paper's base models (public config.json values that matter for the shapes).
KNOWN_CONFIGS: dict[str, dict] = {
    "roberta-base": dict(model_type="roberta", hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                         intermediate_size=3072, vocab_size=50265, max_position_embeddings=514, type_vocab_size=1),
    "roberta-large": dict(model_type="roberta", hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                          intermediate_size=4096, vocab_size=50265, max_position_embeddings=514, type_vocab_size=1),
    "gpt2-medium": dict(model_type="gpt2", architectures=["GPT2LMHeadModel"], n_embd=1024, n_layer=24, n_head=16, vocab_size=50257, n_positions=1024),
    "gpt2-large": dict(model_type="gpt2", architectures=["GPT2LMHeadModel"], n_embd=1280, n_layer=36, n_head=20, vocab_size=50257, n_positions=1024),
    "t5-base": dict(model_type="t5", d_model=768, d_ff=3072, num_layers=12, num_decoder_layers=12, num_heads=12,
                    d_kv=64, vocab_size=32128),
    "meta-llama/Llama-2-7b-hf": dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=4096, intermediate_size=11008,
                                     num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                                     vocab_size=32000, max_position_embeddings=4096),
}
KNOWN_CONFIGS["FacebookAI/roberta-base"] = KNOWN_CONFIGS["roberta-base"]
KNOWN_CONFIGS["FacebookAI/roberta-large"] = KNOWN_CONFIGS["roberta-large"]
KNOWN_CONFIGS["openai-community/gpt2-medium"] = KNOWN_CONFIGS["gpt2-medium"]
KNOWN_CONFIGS["openai-community/gpt2-large"] = KNOWN_CONFIGS["gpt2-large"]
KNOWN_CONFIGS["google-t5/t5-base"] = KNOWN_CONFIGS["t5-base"]
KNOWN_CONFIGS["llama-2-7b"] = KNOWN_CONFIGS["meta-llama/Llama-2-7b-hf"]

def load_config(model_or_config: str):
    """A transformers config from a known name, a local folder or config.json, or the hub."""
    if model_or_config in KNOWN_CONFIGS:
        spec = dict(KNOWN_CONFIGS[model_or_config])
        return transformers.AutoConfig.for_model(spec.pop("model_type"), **spec)
    path = Path(model_or_config)
    if path.is_file():
        spec = json.loads(path.read_text())
        return transformers.AutoConfig.for_model(spec.pop("model_type"), **spec)
    return transformers.AutoConfig.from_pretrained(model_or_config)


def meta_model(config) -> nn.Module:
    """The model the config describes (its first ``architectures`` class, else the bare AutoModel)."""
    arch = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(transformers, arch, None) if arch else None
    if cls is None:
        cls = transformers.AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else transformers.AutoModel
    with torch.device("meta"):
        return cls(config) if arch and cls is getattr(transformers, arch, None) else cls.from_config(config)


def lora_targets(model: nn.Module) -> tuple[str, ...]:
    """The module-name suffixes the paper's LoRA baseline adapts for this architecture (query and value).

    From the architecture table (red/architectures.py); raises UnknownArchitectureError for an
    architecture it does not cover, instead of guessing names that would match nothing.
    """
    mtype = model_type(model)
    arch = lookup(mtype)
    if arch is None or not arch.lora:
        raise UnknownArchitectureError(
            f"no LoRA targets known for architecture {mtype!r} (known: {', '.join(sorted(ARCHITECTURES))}). Pass them "
            "explicitly (lora_targets: [...] in the config, e.g. the query and value projections' module names).")
    return arch.lora


def lora_parameters(model: nn.Module, rank: int = 8, targets: tuple[str, ...] | None = None) -> int:
    """LoRA's parameter count: rank · (fan_in + fan_out) for every module whose name ends with a target.

    Raises UnknownArchitectureError when the targets match no module of the model.
    """
    names = tuple(targets or lora_targets(model))
    total = matched = 0
    for name, module in model.named_modules():
        if name.split(".")[-1] in names and getattr(module, "weight", None) is not None:
            w = module.weight
            fan_in, fan_out = (w.shape[0], w.shape[1]) if type(module).__name__ == "Conv1D" else (w.shape[1], w.shape[0])
            total += rank * (fan_in + fan_out)
            matched += 1
    if not matched:
        raise UnknownArchitectureError(f"LoRA targets {list(names)} match no module of this {type(model).__name__}; "
                                       "check the module names")
    return total


def count_parameters(model_or_config, edit: EditConfig | None = None, lora_rank: int = 8) -> dict[str, int]:
    """The edit method's (RED by default), LoRA (q,v) and full fine-tuning parameter counts, excluding any head.

    The LoRA count is left out for an architecture outside the table (no known targets).
    """
    config = load_config(model_or_config) if isinstance(model_or_config, str) else model_or_config
    model = meta_model(config)
    edit = edit or EditConfig()
    if edit.is_reft:
        own = count_reft_parameters(model, edit)
    else:
        per_vector = {"scale+bias": 2, "scale": 1, "bias": 1}[edit.kind]
        own = sum(per_vector * t.hidden for t in find_targets(model, edit))
    full = sum(p.numel() for p in model.parameters())
    counts = {edit.method: own}
    try:
        counts[f"lora_r{lora_rank}_qv"] = lora_parameters(model, lora_rank)
    except UnknownArchitectureError:
        pass
    counts["full"] = full
    return counts
