"""RED (Representation EDiting): per-layer scaling and bias vectors; ``layer.py`` holds the edit and its merge."""
