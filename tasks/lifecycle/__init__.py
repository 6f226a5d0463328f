"""The nightly job's rules in one place: what a task's inputs are, what a run does with them, and what it
finishes when an earlier run died half-way.

- :mod:`.identity`  what a training was made from (data, resolved config, base checkpoint with tokenizer, code);
- :mod:`.attempts`  each training's folder, its lock and status, and which crashed twin may be resumed;
- :mod:`.plan`      tonight's action for a task: train, unchanged, register what trained, gate what registered;
- :mod:`.gate`      champion and challenger in one label space before they are compared.

These modules hold rules and files only: MLflow facts (a version's tags) are read by ``registry`` and passed
in, and Prefect wraps the steps in ``flows``. See docs/lifecycle.md.
"""
