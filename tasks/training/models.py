"""The model a training trains: the frozen base loaded for a task, the method's trainable parameters on it, and
where they start (a fresh head centred for regression, or an earlier edit's tensors for ``init: production``)."""
from __future__ import annotations

import logging
from typing import Any

import torch
from peft import LoraConfig, TaskType, get_peft_model

from red import EditConfig, EditedModel, EditMismatchError, attach, pretrained
from red.params import lora_targets
from red.targets import task_head_modules
from tasks.lifecycle.gate import align_head

from .config import EDIT_METHODS
from .errors import TrainingError
from .progress import quiet_unless_terminal

log = logging.getLogger(__name__)


def load_base_model(model: str, task_type: str, *, revision: str | None = None, num_labels: int = 2,
                    label_list: list[str] | None = None, dtype: torch.dtype | None = None, tokenizer=None):
    """``(model, fresh)``: the base model for a task type (red.pretrained's loader, which serving uses too)
    and the modules transformers initialised fresh for the task; offline-friendly errors."""
    quiet_unless_terminal()  # its load report names the fresh head, expected: on a terminal only
    try:
        return pretrained.load_base_model(model, task_type, revision=revision, dtype=dtype, label_list=label_list,
                                          num_labels=num_labels, tokenizer=tokenizer)
    except OSError as exc:
        raise TrainingError(
            f"cannot load base model {model!r} ({exc.__class__.__name__}: {str(exc).splitlines()[0]}). Pass a local "
            "checkpoint folder, or a hub name with network access (HF_HUB_OFFLINE must be unset)."
        ) from exc


def load_tokenizer(model: str, revision: str | None = None, task_type: str = "classification"):
    """The base model's tokenizer (red.pretrained's loader), padding on the right for causal LM training."""
    tok = pretrained.load_tokenizer(model, revision=revision)
    if task_type == "causal_lm":
        tok.padding_side = "right"  # training; generation switches to left padding itself
    return tok


def precision_dtype(precision: str) -> torch.dtype:
    """The dtype the frozen base is loaded in for a training precision (its weights are never updated)."""
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def task_head(model, edit: dict[str, Any], fresh: list[str]) -> list[str]:
    """The modules trained and saved with the task: the task modules around the backbone and anything
    transformers initialised fresh; an explicit ``edit.head`` must cover the fresh ones."""
    explicit = edit.get("head")
    if isinstance(explicit, list):
        missing = [m for m in fresh if not any(m == h or m.startswith(h + ".") for h in explicit)]
        if missing:
            raise TrainingError(f"loading the base initialises {missing} fresh for this task, but edit.head={explicit} "
                                "does not train them, so the saved model could not reproduce the trained one. Add them "
                                "to edit.head (or leave head unset).")
        return list(explicit)
    if explicit == "none":
        if fresh:
            raise TrainingError(f"edit.head='none' but loading the base initialises {fresh} fresh for this task; "
                                "they must be trained and saved: leave head unset")
        return []
    head = task_head_modules(model)
    return head + [m for m in fresh if not any(m == h or m.startswith(h + ".") for h in head)]


def head_for(model, edit: dict[str, Any], task_type: str, fresh: list[str]) -> list[str]:
    """The modules trained and saved with a task of ``task_type`` (see :func:`task_head`); none for language
    models, which must load complete (TrainingError when loading left modules freshly initialised)."""
    if task_type in ("classification", "regression"):
        return task_head(model, edit, fresh)
    if fresh:
        raise TrainingError(f"loading the base as a {task_type} model initialises {fresh} fresh (the checkpoint lacks "
                            "them); an edit trains on a complete language model: use a checkpoint that has them")
    return []


def prepare_model(model, method: str, hp: dict[str, Any], edit: dict[str, Any], task_type: str,
                  fresh: list[str] | None = None):
    """Freeze the base model and make the method's parameters trainable. Returns (model, edit_parameter_count).

    Trainable parameters are kept in fp32 whatever the base dtype (mixed precision computes in
    the base dtype; the optimizer updates fp32 values).
    """
    head = head_for(model, edit, task_type, fresh or [])
    if method in EDIT_METHODS:
        edited = attach(model, edit_config(method, edit, head))
        trainable_fp32(edited)
        return edited, edited.num_edit_parameters
    if method == "lora":
        targets = hp.get("lora_targets") or list(lora_targets(model))
        task = {"classification": TaskType.SEQ_CLS, "regression": TaskType.SEQ_CLS,
                "seq2seq": TaskType.SEQ_2_SEQ_LM}.get(task_type, TaskType.CAUSAL_LM)
        peft_model = get_peft_model(model, LoraConfig(
            r=hp["lora_r"], lora_alpha=hp["lora_alpha"], lora_dropout=hp["lora_dropout"],
            target_modules=targets, task_type=task, modules_to_save=head or None))
        trainable_fp32(peft_model)
        lora = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
        return peft_model, lora
    head_prefixes = tuple(f"{h}." for h in head)
    if method == "head" and not head:
        raise TrainingError(f"method 'head' trains only the task head, and a {task_type} model has none")
    for name, p in model.named_parameters():
        if method == "full":
            p.requires_grad_(True)
        elif method == "head":
            p.requires_grad_(name.startswith(head_prefixes))
        else:  # bitfit: biases only, plus the task head
            p.requires_grad_(name.endswith(".bias") or name.startswith(head_prefixes))
    trainable_fp32(model)
    count = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and not n.startswith(head_prefixes))
    return model, count


def edit_config(method: str, edit: dict[str, Any], head: list[str]):
    """The ``red.EditConfig`` an edit method trains: the config's ``edit`` fields, with the task head made explicit."""
    config = {**edit, "head": head} if head and edit.get("head", "auto") == "auto" else edit
    return EditConfig(method=method, **config)


def trainable_fp32(model) -> None:
    """Keep every trainable floating-point parameter in fp32 (the optimizer updates fp32 values)."""
    for p in model.parameters():
        if p.requires_grad and p.is_floating_point() and p.dtype != torch.float32:
            p.data = p.data.float()


@torch.no_grad()
def center_regression_head(model, collator, rows, batch_size: int) -> float | None:
    """Start a freshly initialised regression head at the training labels' mean; returns the shift applied.

    Why: a fresh head predicts ~0 while the labels sit far from 0 (STS-B: 0-5, mean 2.7). The MSE gradient is then
    dominated by that offset: every row says "higher", so the head and the method's own parameters (LoRA, BitFit,
    full, ReFT) spend their steps moving all predictions up together, along a direction that carries no signal
    (Pearson stays ~0, or turns negative), and a short training at a rate set for adapters (LoRA 4e-4, full 1e-5)
    ends before the offset is gone. Starting at the mean leaves the residual ``y - mean``, whose gradient is the
    signal itself, for every method alike. Pearson and Spearman do not depend on the offset, so nothing is lost.

    The output layer is the last trainable ``nn.Linear`` with one output the forward pass calls (a head of any
    architecture, the trained copy under PEFT's ``modules_to_save``). It gets ``bias += shift``; a layer without a
    bias (GPT-2's or Llama's ``score``) has its weight moved along its mean input, by as much as moves the mean
    prediction by ``shift``. The target is the mean of every training label; the prediction is measured in
    evaluation mode on the first rows (at most 256: a fresh head predicts about the same for every row), as
    :func:`initial_loss`:
    no random generator is drawn from, so training runs exactly as it would after it.
    """
    n = min(len(rows), 256)
    if n == 0:
        return None
    step = max(1, batch_size)
    batches = [collator([rows[i] for i in range(start, min(n, start + step))]) for start in range(0, n, step)]
    # the mean of every training label (no forward pass needed), not of the first rows: a file sorted by score
    # would otherwise start the head far from the mean, which is what this is for
    labels = rows["labels"] if hasattr(rows, "column_names") else [row["labels"] for row in rows]
    target = float(torch.tensor(labels, dtype=torch.float64).reshape(-1).mean())
    was_training = model.training
    model.eval()
    try:
        predicted, layer, inputs = _mean_prediction(model, batches)
        if layer is None:
            log.warning("regression head not centred: the model has no trainable one-output linear layer")
            return None
        shift = target - predicted
        if layer.bias is not None:
            layer.bias.add_(shift)
            return shift
        # no bias: move the weight along the layer's mean input (over every position it sees: a decoder's score
        # layer runs on all tokens before the last one is picked), by as much as moves the mean prediction by shift
        direction = (inputs / inputs.dot(inputs)).to(layer.weight).unsqueeze(0) if inputs.norm() > 0 else None
        if direction is None:
            return None
        layer.weight.add_(direction)
        gain = _mean_prediction(model, batches)[0] - predicted
        if abs(gain) < 1e-6:
            layer.weight.sub_(direction)
            return None
        layer.weight.add_((shift / gain - 1.0) * direction)
        return shift
    finally:
        model.train(was_training)


def _mean_prediction(model, batches) -> tuple[float, torch.nn.Linear | None, torch.Tensor]:
    """Mean model output over ``batches`` (labels left out), the last trainable one-output ``nn.Linear`` the forward
    pass called and that layer's mean input row (float64, CPU)."""
    calls: list[tuple[torch.nn.Linear, torch.Tensor, int]] = []

    def record(module, inputs, output):
        flat = inputs[0].detach().reshape(-1, module.in_features).double()
        calls.append((module, flat.sum(0).cpu(), flat.shape[0]))

    hooks = [m.register_forward_hook(record) for m in model.modules()
             if isinstance(m, torch.nn.Linear) and m.out_features == 1 and m.weight.requires_grad]
    device = next(p for p in model.parameters()).device
    layer, summed, count, predicted, rows = None, 0.0, 0, 0.0, 0
    try:
        for batch in batches:
            calls.clear()
            logits = model(**{k: v.to(device) for k, v in batch.items() if k != "labels" and hasattr(v, "to")}).logits
            predicted += float(logits.double().sum())
            rows += logits.shape[0]
            if calls:
                layer, row_sum, n = calls[-1]
                summed, count = summed + row_sum, count + n
    finally:
        for hook in hooks:
            hook.remove()
    mean_input = summed / count if count else torch.zeros(1, dtype=torch.float64)
    return predicted / max(rows, 1), layer, mean_input


def load_init_state(model, state: dict[str, torch.Tensor], note: str,
                     label_list: list[str] | None = None) -> None:
    """Start from an earlier edit's tensors (``init: production``); refuse a layout that does not fit.

    A head trained on other labels is matched by name (``tasks.lifecycle.gate.align_head``): a reordered
    ``label_list`` gets the old rows in tonight's order, never classes swapped; other names are refused.
    """
    if not isinstance(model, EditedModel):
        raise TrainingError(f"init from {note} needs an edit method (red, loreft, direft)")
    try:
        state = align_head(state, label_list, note)
    except ValueError as exc:
        raise TrainingError(f"cannot warm-start: {exc}") from exc
    try:
        model.load_edit_state(state)
    except EditMismatchError as exc:
        raise TrainingError(
            f"cannot start from {note}: its edit does not fit this training's edit layout ({exc}). Train with the "
            "same edit settings (position, kind, layers, rank) and labels, or set init: fresh.") from exc
