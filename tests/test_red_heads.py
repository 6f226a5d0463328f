"""Task heads and pad tokens: what training ends with is what a load of the saved edit gives back.

Specifications:
- for every architecture in the table that has a sequence-classification class, everything transformers
  initialises fresh when the base is loaded for the task (DeBERTa's top-level ``pooler`` as much as the
  classifier) is trained and saved with the edit: logits after save -> load equal logits at the end of training;
- a fresh module inside the backbone (a BERT checkpoint saved without its pooler) is trained and saved too,
  and a load that would leave one random is refused;
- a base model whose tokenizer has no pad token (GPT-2, Llama) gets one the same way in training, serving and
  the registration check, so its classification edits predict on batches.
"""
from __future__ import annotations

import pandas as pd
import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, TrainerCallback

from conftest import probability_matrix

import red
from red import EditConfig, attach
from red.architectures import ARCHITECTURES
from red.pretrained import load_pretrained_edit
from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

from test_eval_lm import word_tokenizer

SMALL = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
             max_position_embeddings=64)
TINY = {  # architecture -> config fields (beyond SMALL where the names are the same)
    "bert": {}, "roberta": dict(pad_token_id=1), "xlm-roberta": dict(pad_token_id=1), "electra": dict(embedding_size=32),
    "deberta-v2": {}, "mpnet": {}, "gpt_neox": {},
    "distilbert": dict(dim=32, n_layers=2, n_heads=4, hidden_dim=37),
    "gpt2": dict(n_embd=32, n_layer=2, n_head=4, n_positions=64),
    "llama": dict(num_key_value_heads=2), "mistral": dict(num_key_value_heads=2), "qwen2": dict(num_key_value_heads=2),
    "qwen3": dict(num_key_value_heads=2, head_dim=8), "gemma": dict(num_key_value_heads=2, head_dim=8),
    "gemma2": dict(num_key_value_heads=2, head_dim=8), "phi3": dict(num_key_value_heads=2),
    "t5": dict(d_model=32, d_ff=40, d_kv=8, num_layers=2, num_decoder_layers=2, num_heads=4, decoder_start_token_id=0),
    "mt5": dict(d_model=32, d_ff=40, d_kv=8, num_layers=2, num_decoder_layers=2, num_heads=4, decoder_start_token_id=0),
    "bart": dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
                 encoder_ffn_dim=37, decoder_ffn_dim=37),
    "opt": dict(ffn_dim=37, word_embed_proj_dim=32),
}
EOS = 2  # the tiny configs' and the word tokenizer's end-of-sequence id is set to this below


def tiny_base(model_type: str):
    """A backbone-only model (as a pretrained base checkpoint is) of ``model_type``, a few thousand parameters."""
    fields = {"bos_token_id": 1, "eos_token_id": EOS, "pad_token_id": 0, **SMALL, **TINY[model_type]}
    config = AutoConfig.for_model(model_type, **fields)
    torch.manual_seed(0)
    return AutoModel.from_config(config)


def _batch() -> dict[str, torch.Tensor]:
    """Two rows, the second right-padded; every row ends with EOS (T5/BART heads pool the EOS token)."""
    ids = torch.tensor([[11, 12, 13, 14, 15, 16, EOS], [21, 22, 23, 24, EOS, 0, 0]])
    return {"input_ids": ids, "attention_mask": (torch.arange(7) < torch.tensor([[7], [5]])).long()}


def _train_steps(edited, batch, labels, steps: int = 4):
    edited.train()
    optim = torch.optim.AdamW([p for p in edited.parameters() if p.requires_grad], lr=5e-2)
    for _ in range(steps):
        loss = edited(**batch, labels=labels).loss
        optim.zero_grad()
        loss.backward()
        optim.step()
    edited.eval()


CLASSIFIABLE = sorted(t for t in ARCHITECTURES if t in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES)


def test_the_tiny_configs_cover_every_architecture_of_the_table():
    assert set(TINY) == set(ARCHITECTURES) and set(CLASSIFIABLE) == set(ARCHITECTURES)  # all have a classifier


@pytest.mark.parametrize("model_type", CLASSIFIABLE)
def test_logits_after_save_and_load_equal_the_trained_ones(tmp_path, model_type):
    base = tmp_path / "base"
    tiny_base(model_type).save_pretrained(base)
    tok = word_tokenizer(eos_id=EOS)
    tok.save_pretrained(base)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=3)
    model.config.pad_token_id = tok.pad_token_id
    edited = attach(model, EditConfig())
    batch = _batch()
    _train_steps(edited, batch, torch.tensor([2, 0]))
    with torch.no_grad():
        trained = edited(**batch).logits
    path = edited.save(tmp_path / "edit", base_model=str(base),
                       extra={"task_type": "classification", "label_list": ["a", "b", "c"]})
    torch.manual_seed(123)  # a fresh load must not depend on the random init of anything
    loaded, _, _ = load_pretrained_edit(path, device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, trained, atol=1e-5, rtol=0)


class _Logits(TrainerCallback):
    """The trained model's logits on a fixed batch, at the end of training (after the best epoch is restored)."""

    def __init__(self, batch):
        self.batch, self.logits = batch, None

    def on_train_end(self, args, state, control, model=None, **kwargs):
        model.eval()
        with torch.no_grad():
            self.logits = model(**self.batch).logits.float()


@pytest.fixture(scope="module")
def sentiment(tmp_path_factory):
    from tasks.data import DataSpec, prepare_data

    root = tmp_path_factory.mktemp("sentiment")
    return prepare_data(DataSpec(name="sentiment", source="synthetic", task="sentiment", path=root / "files",
                                 synthetic={"n_train": 32, "n_dev": 16}), seed=0, cache_dir=root / "cache")


def _train(data, base, tmp_path, batch):
    from tasks.training import TrainConfig, train

    seen = _Logits(batch)
    result = train(data, TrainConfig(model=str(base), epochs=1, batch_size=8, max_length=16, learning_rate=5e-2,
                                     logging_steps=1), tmp_path / "out", callbacks=[seen])
    return result, seen.logits


def test_a_fresh_module_inside_the_backbone_is_trained_and_saved(tmp_path, sentiment, minilm_path):
    from transformers import AutoTokenizer, BertConfig, BertModel

    base = tmp_path / "bert-no-pooler"
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(minilm_path)
    BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=37), add_pooling_layer=False).save_pretrained(base)
    tok.save_pretrained(base)
    batch = dict(tok(["a wonderful film", "dull and far too long"], padding=True, return_tensors="pt"))
    result, trained = _train(sentiment, base, tmp_path, batch)
    tensors, meta = red.read_edit(result.edit_path)
    assert "bert.pooler" in meta["head"] and "head.bert.pooler.dense.weight" in tensors
    loaded, _, _ = load_pretrained_edit(result.edit_path, device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, trained, atol=1e-5, rtol=0)
    # an edit file that lacks a module the load initialises randomly is refused, not served
    edited = attach(AutoModelForSequenceClassification.from_pretrained(base, num_labels=2), EditConfig(head="none"))
    partial = edited.save(tmp_path / "partial", base_model=str(base), extra={"task_type": "classification"})
    with pytest.raises(red.EditMismatchError, match="randomly"):
        load_pretrained_edit(partial, device="cpu")


def test_a_base_without_a_pad_token_trains_registers_and_serves_batches(tmp_path, sentiment):
    from transformers import GPT2Config, GPT2Model, PreTrainedTokenizerFast

    from registry.serving.pyfunc import load_in_process
    from registry.serving.version_config import build_model_config

    base = tmp_path / "gpt2-no-pad"
    torch.manual_seed(0)
    GPT2Model(GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=EOS,
                         eos_token_id=EOS)).save_pretrained(base)
    padded = word_tokenizer(eos_id=EOS)
    tok = PreTrainedTokenizerFast(tokenizer_object=padded.backend_tokenizer, eos_token="<eos>", unk_token="<unk>")
    assert tok.pad_token is None
    tok.save_pretrained(base)
    texts = ["what animal says moo", "blue", "which color is the sky on a clear day"]
    batch = dict(tok(texts, padding=False, return_tensors=None))
    width = max(map(len, batch["input_ids"]))
    ids = torch.tensor([row + [EOS] * (width - len(row)) for row in batch["input_ids"]])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in batch["input_ids"]])
    result, trained = _train(sentiment, base, tmp_path, {"input_ids": ids, "attention_mask": mask})
    tensors, meta = red.read_edit(result.edit_path)
    config = build_model_config(task="sentiment", task_type="classification", meta=meta, tensors=tensors,
                                text_columns=list(sentiment.text_columns), label_list=sentiment.label_list)
    served = load_in_process(result.edit_path, config)  # what registration's check runs
    out = served.predict(None, pd.DataFrame({sentiment.text_columns[0]: texts}))
    probs = torch.softmax(trained, -1).numpy()
    assert probability_matrix(out, sentiment.label_list) == pytest.approx(probs, abs=1e-5)
