"""The edit methods, one folder each (as PEFT's ``tuners/<method>/``): what each method adds to a frozen layer.

- ``red/``:  RED, a learned scaling and bias on a layer's output (``h2 = s * h1 + b``); folds into the weights.
- ``reft/``: the ReFT family (LoReFT, DiReFT, NodiReFT), rank-r interventions on the residual stream at
  chosen prompt positions; served attached, never folded.

What every method shares stays one level up: the configuration (red/config.py, one ``EditConfig`` for all
methods, so an edit file's ``config`` reads back whatever the method), the targets, the hooks, the edited
model (red/model.py), the edit file (red/io.py) and the bank. These ``__init__`` files import nothing, so
red/config.py can read a method's notation without loading the method's layers.
"""
