"""registry.serving: registered versions answering requests, one task at a time or many on one base.

* ``version_config`` - the ``model_config``, signature and input example of one registered version.
* ``pyfunc``         - ``RedEditModel``: one version (base model + RED edit, or a baseline) as an MLflow pyfunc.
* ``answers``        - the one path from texts to answers both servers use: tokens, batches, scores,
  generation and its ``max_new_tokens`` checks, ``RequestError`` (HTTP 400).
* ``multitask``      - ``MultiTaskModel``: many RED edits on shared bases, following their alias; built from
  ``serving_config`` (which models, which alias), ``served_tasks`` (each version fetched and checked),
  ``snapshot`` (loaded bases, banks, the snapshot a request reads) and ``routing`` (rows to tasks).
* ``limits``         - how large a request may be (rows, body, characters per text field; HTTP 413 past them) and
  how long it may compute (its deadline, checked per batch); ``request_guard`` checks a body before MLflow parses it.
* ``bundle``         - ``register_bundle``: a serving config registered as a model; ``serve_app`` is ``redflow serve``.
* ``model_code`` / ``bundle_code`` - the models-from-code entry points MLflow copies into each version.
* ``requirements``   - the pip requirements a pyfunc is logged with.
* ``server``         - start/stop a local ``mlflow server`` or ``mlflow models serve`` (tests, demo).

``registry.pyfunc`` and ``registry.multitask`` re-export ``RedEditModel`` and ``MultiTaskModel`` for
versions registered before this package existed (their stored entry points import those names).
"""
