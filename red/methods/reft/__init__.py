"""The ReFT family: ``layer.py`` (the LoReFT/DiReFT/NodiReFT interventions), ``positions.py`` (which prompt
tokens they edit, and the ``f7+l7`` notation), ``model.py`` (how EditedModel wires them in and counts them)."""
