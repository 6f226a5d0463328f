"""The one table that maps an architecture to the modules an edit acts on.

Keys are ``config.model_type``. For each *position* the value is a list of
regular expressions searched (``re.search``) in full module names; the first
group of digits in a match is the layer index used for layer selection.

- ``ffn``:   the FFN down-projection whose output RED edits (the paper's default).
- ``attn``:  the attention output projection (the paper's ablation).
- ``block``: a whole transformer block; its output is the residual stream that
             ReFT interventions act on.

``lora`` names the attention projections the paper's LoRA baseline adapts (query and
value, or the fused QKV projection where an architecture has one); PEFT matches them as
module-name suffixes.

``bias_flags`` names the config switch that gives a bias-less target layer a
bias in a saved checkpoint (Llama's ``mlp_bias``); without one, a merged bias
on such a layer cannot be exported and the export refuses (see merge.py).

To support a new architecture add a row here; nothing else changes. Any model
also works without a row through explicit ``target_modules`` patterns.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Architecture:
    ffn: tuple[str, ...]
    attn: tuple[str, ...]
    block: tuple[str, ...]
    bias_flags: dict[str, str] = field(default_factory=dict)
    # Conv1D-style layers store weights as (in, out) instead of nn.Linear's (out, in).
    conv1d: bool = False
    lora: tuple[str, ...] = ()


_BERT = Architecture(
    ffn=(r"encoder\.layer\.(\d+)\.output\.dense$",),
    attn=(r"encoder\.layer\.(\d+)\.attention\.output\.dense$",),
    block=(r"encoder\.layer\.(\d+)$",),
    lora=("query", "value"),
)
_LLAMA = Architecture(
    ffn=(r"layers\.(\d+)\.mlp\.down_proj$",),
    attn=(r"layers\.(\d+)\.self_attn\.o_proj$",),
    block=(r"layers\.(\d+)$",),
    lora=("q_proj", "v_proj"),
)
_T5 = Architecture(
    # encoder and decoder blocks both carry a DenseReluDense (or gated) FFN.
    ffn=(r"(?:encoder|decoder)\.block\.(\d+)\.layer\.\d+\.DenseReluDense\.wo$",),
    attn=(r"(?:encoder|decoder)\.block\.(\d+)\.layer\.0\.SelfAttention\.o$",),
    block=(r"(?:encoder|decoder)\.block\.(\d+)$",),
    lora=("q", "v"),
)
_FC2 = Architecture(  # BART/OPT-style decoder or encoder layers
    ffn=(r"layers\.(\d+)\.fc2$",),
    attn=(r"layers\.(\d+)\.self_attn\.out_proj$",),
    block=(r"layers\.(\d+)$",),
    lora=("q_proj", "v_proj"),
)

ARCHITECTURES: dict[str, Architecture] = {
    "bert": _BERT,
    "roberta": _BERT,
    "xlm-roberta": _BERT,
    "electra": _BERT,
    "deberta-v2": replace(_BERT, lora=("query_proj", "value_proj")),
    "mpnet": replace(_BERT, lora=("q", "v")),
    "distilbert": Architecture(
        ffn=(r"transformer\.layer\.(\d+)\.ffn\.lin2$",),
        attn=(r"transformer\.layer\.(\d+)\.attention\.out_lin$",),
        block=(r"transformer\.layer\.(\d+)$",),
        lora=("q_lin", "v_lin"),
    ),
    "gpt2": Architecture(
        ffn=(r"h\.(\d+)\.mlp\.c_proj$",),
        attn=(r"h\.(\d+)\.attn\.c_proj$",),
        block=(r"h\.(\d+)$",),
        conv1d=True,
        lora=("c_attn",),  # fused query/key/value
    ),
    "gpt_neox": Architecture(
        ffn=(r"layers\.(\d+)\.mlp\.dense_4h_to_h$",),
        attn=(r"layers\.(\d+)\.attention\.dense$",),
        block=(r"layers\.(\d+)$",),
        lora=("query_key_value",),  # fused query/key/value
    ),
    "llama": replace(_LLAMA, bias_flags={"ffn": "mlp_bias", "attn": "attention_bias"}),
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "gemma": _LLAMA,
    "gemma2": _LLAMA,
    "phi3": replace(_LLAMA, lora=("qkv_proj",)),  # fused query/key/value
    "t5": _T5,
    "mt5": _T5,
    "bart": _FC2,
    "opt": _FC2,
}

POSITIONS = ("ffn", "attn", "ffn+attn")


def lookup(model_type: str) -> Architecture | None:
    return ARCHITECTURES.get(model_type)
