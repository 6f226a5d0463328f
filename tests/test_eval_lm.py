"""lm-eval through local task folders: ARC conversion, edited models, tokenizer guards, degenerate scores, suites."""
from __future__ import annotations

import json
import time

import pytest
import torch
import yaml

from red import EditConfig, attach
from tasks.evaluate import (SUITES, DegenerateScoresError, EvalUnavailableError, SuiteTask, TokenizerError,
                            check_degenerate, evaluate_lm, resolve_tasks, write_arc_task)

WORDS = ("which color is the sky on a clear day what animal says moo how many legs does spider have "
         "blue green red cow dog cat eight six four sun moon star water ice fire").split()




def arc_rows(n=8, digit_labels_every=3, multiword=True):
    """ARC's original layout (question.stem, choices[{text,label}], answerKey); some rows use digit labels."""
    rows = []
    answers = ["blue", "green", "red", "cow", "dog", "cat", "eight", "six", "four", "sun"]
    for i in range(n):
        digits = i % digit_labels_every == 2
        labels = ["1", "2", "3", "4"] if digits else ["A", "B", "C", "D"]
        texts = [answers[(i + k) % len(answers)] + (" water" if k == 1 and multiword else "") for k in range(4)]
        rows.append({"id": f"Q{i}", "question": {"stem": f"which color is the sky on a clear day {WORDS[i]}",
                                                 "choices": [{"text": t, "label": lb} for t, lb in zip(texts, labels)]},
                     "answerKey": labels[i % 4]})
    return rows


def word_tokenizer(vocab_size=99, eos_id=98, pad_id=0):
    """A real (Rust) word-level tokenizer whose ids fit the tiny models' 99-row embedding table."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted(set(WORDS) | {"question", "answer", ":", "?", ".", "\n"})
    vocab = {"<pad>": pad_id, "<unk>": 1, "<eos>": eos_id}
    free = (i for i in range(vocab_size) if i not in vocab.values())
    for w in words:
        vocab[w] = next(free)
    for i in free:  # contiguous ids: tokenizer.vocab_size must equal the embedding rows
        vocab[f"<extra_{i}>"] = i
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.normalizer = __import__("tokenizers").normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")


@pytest.fixture(scope="module")
def arc_task(tmp_path_factory):
    out = tmp_path_factory.mktemp("tasks")
    path = out / "ARC-Tiny-Test.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in arc_rows()))
    return write_arc_task({"test": path, "validation": arc_rows(3)}, out, name="arc_tiny")


# ---- the local task folder -------------------------------------------------------------------
def test_arc_jsonl_becomes_a_task_folder_with_the_builtin_arc_prompt(arc_task):
    config = yaml.safe_load(arc_task.yaml_path.read_text())
    assert config["task"] == "arc_tiny" and config["dataset_path"] == "json"
    assert config["doc_to_text"] == "Question: {{question}}\nAnswer:"
    assert config["doc_to_target"] == "{{choices.label.index(answerKey)}}"
    assert config["test_split"] == "test" and config["fewshot_split"] == "validation"
    assert arc_task.splits == {"validation": 3, "test": 8}
    doc = json.loads((arc_task.folder / "data" / "test.jsonl").read_text().splitlines()[2])
    assert doc["choices"]["label"] == ["1", "2", "3", "4"] and doc["answerKey"] == "3"  # digit labels kept
    assert doc["question"].startswith("which color")


def test_rows_whose_answer_is_not_a_choice_are_skipped_and_reported(tmp_path):
    rows = arc_rows(4)
    rows[1]["answerKey"] = "E"
    task = write_arc_task({"test": rows}, tmp_path, name="arc_bad", limit=2)
    assert task.splits == {"test": 2} and task.skipped == {"test": ["Q1"]}


# ---- evaluation -----------------------------------------------------------------------------
def test_edited_model_scores_the_same_attached_and_merged(make_tiny, arc_task):
    edited = attach(make_tiny("gpt2"), EditConfig())
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in edited.edit_parameters():
            p.add_(torch.randn(p.shape, generator=g))
    tok = word_tokenizer()
    attached = evaluate_lm(edited, tok, "arc_tiny", include_path=arc_task.folder, bootstrap_iters=0)
    edited.merge()
    merged = evaluate_lm(edited, tok, "arc_tiny", include_path=arc_task.folder, bootstrap_iters=0)

    assert set(attached.metrics) == {"arc_tiny/acc", "arc_tiny/acc_norm", "average"}
    assert attached.primary == "average" and attached.value == attached.metrics["arc_tiny/acc_norm"]
    assert attached.metrics == pytest.approx(merged.metrics)
    assert attached.details["n_samples"]["arc_tiny"]["effective"] == 8
    assert attached.details["identical_choice_fraction"] == {"arc_tiny": 0.0}
    assert attached.details["tokenizer"]["changes"] == []  # a causal word tokenizer needs nothing changed
    assert "+ red (attached" in attached.model and "merged" in merged.model
    assert edited.base_model.training is False


def test_bert_tokenizer_is_made_safe_and_a_forced_bos_is_refused(minilm_path, arc_task):
    """BERT-like tokenizers append [SEP]: lm-eval would score [SEP] instead of one-word answers."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(minilm_path)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=16, n_layer=1, n_head=2, n_positions=64,
                                       bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id)).eval()
    with pytest.raises(TokenizerError, match="add_bos_token=False"):
        evaluate_lm(model, tok, "arc_tiny", include_path=arc_task.folder, add_bos_token=True)
    report = evaluate_lm(model, tok, "arc_tiny", include_path=arc_task.folder, limit=4, bootstrap_iters=0)
    tk = report.details["tokenizer"]
    assert tk["adds_suffix_token"] and tk["add_bos_token"] is False and tk["eos_token"] == "[SEP]"
    assert report.details["identical_choice_fraction"] == {"arc_tiny": 0.0}
    assert tok.eos_token is None  # the caller's tokenizer is untouched


def test_constant_logits_are_reported_as_degenerate_not_as_chance_accuracy(make_tiny, tmp_path):
    task = write_arc_task({"test": arc_rows(4, multiword=False)}, tmp_path, name="arc_one_word")
    model = make_tiny("gpt2")
    with torch.no_grad():  # a broken model: the final norm outputs zeros, so every token has the same logit
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.zero_()
    with pytest.raises(DegenerateScoresError, match="identical log-likelihoods"):
        evaluate_lm(model, word_tokenizer(), "arc_one_word", include_path=task.folder, bootstrap_iters=0)


def test_degenerate_policy_warns_or_raises_above_the_threshold(caplog):
    same = {"filtered_resps": [(-2.5, False), (-2.5, False), (-2.5, False)]}
    varied = {"filtered_resps": [(-2.5, False), (-1.0, True), (-4.0, False)]}
    generated = {"filtered_resps": ["42"]}  # generate_until samples are not multiple choice: not checked
    samples = {"mc": [same, same, varied], "gen": [generated]}
    with pytest.raises(DegenerateScoresError, match="mc: 67% of 3 questions"):
        check_degenerate(samples)
    assert check_degenerate(samples, policy="warn") == {"mc": pytest.approx(2 / 3)}
    assert "identical log-likelihoods" in caplog.text
    assert check_degenerate(samples, threshold=0.9) == {"mc": pytest.approx(2 / 3)}


def test_vocabulary_larger_than_the_embedding_table_is_refused(make_tiny, minilm_path, arc_task):
    from transformers import AutoTokenizer

    with pytest.raises(TokenizerError, match="30522 tokens but the model's embedding table only 99"):
        evaluate_lm(make_tiny("gpt2"), AutoTokenizer.from_pretrained(minilm_path), "arc_tiny",
                    include_path=arc_task.folder)


def test_a_classifier_head_is_refused(make_tiny, arc_task):
    with pytest.raises(TypeError, match="no generative language-model head"):
        evaluate_lm(make_tiny("bert", head="cls"), word_tokenizer(), "arc_tiny", include_path=arc_task.folder)


# ---- suites ---------------------------------------------------------------------------------
def test_openllm_v1_declares_the_leaderboard_tasks_shots_and_metrics():
    suite = {t.task: (t.num_fewshot, t.metric, t.filter) for t in SUITES["openllm-v1"]}
    assert suite == {
        "arc_challenge": (25, "acc_norm", "none"), "hellaswag": (10, "acc_norm", "none"),
        "truthfulqa_mc2": (0, "acc", "none"), "mmlu": (5, "acc", "none"), "winogrande": (5, "acc", "none"),
        "gsm8k": (5, "exact_match", "strict-match"),
    }


def test_task_specs_resolve_suites_names_and_shots():
    label, tasks = resolve_tasks(["openllm-v1", "arc_tiny:3", SuiteTask("gsm8k", 8, "exact_match", "flexible-extract")])
    assert label == "openllm-v1+arc_tiny:3+gsm8k" and len(tasks) == 8
    assert tasks[6] == SuiteTask("arc_tiny", 3) and tasks[7].filter == "flexible-extract"


def test_openllm_v1_offline_fails_fast_naming_the_datasets(make_tiny, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))  # nothing pre-fetched
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    monkeypatch.setattr("datasets.config.HF_DATASETS_CACHE", str(tmp_path / "empty-ds-cache"))
    start = time.perf_counter()
    with pytest.raises(EvalUnavailableError) as err:
        evaluate_lm(make_tiny("gpt2"), word_tokenizer(), "openllm-v1", limit=2)
    assert time.perf_counter() - start < 2.0
    message = str(err.value)
    for dataset in ("allenai/ai2_arc", "Rowan/hellaswag", "cais/mmlu", "openai/gsm8k", "allenai/winogrande"):
        assert dataset in message
    assert "offline" in message and "include_path" in message


def test_unknown_task_names_get_close_matches(make_tiny, arc_task):
    with pytest.raises(ValueError, match=r"unknown lm-eval task.*'arc_tinny': \['arc_tiny'\]"):
        evaluate_lm(make_tiny("gpt2"), word_tokenizer(), "arc_tinny", include_path=arc_task.folder,
                    builtin_tasks=False)


def test_shared_arc_files_convert_completely(shared_data, tmp_path):
    arc = shared_data / "mc" / "arc"
    for level, n_test, n_dev in (("Challenge", 1172, 299), ("Easy", 2376, 570)):
        task = write_arc_task({"test": arc / f"ARC-{level}-Test.jsonl", "validation": arc / f"ARC-{level}-Dev.jsonl"},
                              tmp_path, name=f"arc_{level.lower()}_local")
        assert task.splits == {"validation": n_dev, "test": n_test} and task.skipped == {}
        docs = [json.loads(line) for line in (task.folder / "data" / "test.jsonl").read_text().splitlines()]
        assert any(d["choices"]["label"][0] == "1" for d in docs)  # digit labels exist and are kept
        assert {len(d["choices"]["text"]) for d in docs} >= {4}


# ---- ReFT under lm-eval -------------------------------------------------------------------------
def _requests(tok):
    """Log-likelihood requests of different context and continuation lengths, as lm-eval builds them."""
    from lm_eval.api.instance import Instance

    pairs = [("question : which color is the sky on a clear day ? answer :", " blue"),
             ("question : what animal says moo ? answer :", " cow"),
             ("question : how many legs does a spider have ? answer :", " eight legs water"),
             ("what animal says moo", " a cow says moo"),
             ("sun", " moon star"),
             ("question : which color is the sky ? answer :", " green"),
             ("dog cat cow dog cat cow dog cat cow dog", " cat"),
             ("fire ice water", " fire ice water fire ice water")]
    return [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]


def _reference(edited, tok, context: str, continuation: str) -> float:
    """The continuation's log-likelihood in one pass over context + continuation in which the context is the
    prompt (labels -100 there: red/methods/reft/positions.py's convention, as in training and generate())."""
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    cont = tok(continuation, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([ctx + cont[:-1]])
    labels = torch.tensor([[-100] * len(ctx) + cont[:-1]])
    with torch.no_grad():
        logits = edited(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).logits
    logprobs = torch.log_softmax(logits.float(), -1)[0, len(ctx) - 1:]
    return float(logprobs.gather(1, torch.tensor(cont)[:, None]).sum())


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_reft_log_likelihoods_do_not_depend_on_the_batch_and_edit_the_context(make_tiny, kind):
    from tasks.evaluate.lm_eval_suite import lm_eval_model

    edited = attach(make_tiny(kind), EditConfig(method="loreft", rank=2, positions="f2+l2"))
    tok = word_tokenizer()
    scores = {}
    for batch_size in (1, 3, 8):
        lm = lm_eval_model(edited, tok, batch_size=batch_size, add_bos_token=False)
        scores[batch_size] = [ll for ll, _ in lm.loglikelihood(_requests(tok))]
    for batch_size in (3, 8):
        assert scores[batch_size] == pytest.approx(scores[1], abs=1e-5)
    want = [_reference(edited, tok, *r.args) for r in _requests(tok)]
    assert scores[1] == pytest.approx(want, abs=1e-5)
    edited.detach()  # the plain model scores differently: the edit is really applied
    plain = lm_eval_model(make_tiny(kind), tok, batch_size=8, add_bos_token=False)
    assert [ll for ll, _ in plain.loglikelihood(_requests(tok))] != pytest.approx(scores[1], abs=1e-3)

