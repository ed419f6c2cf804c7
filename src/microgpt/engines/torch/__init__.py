"""The torch engine: the project's one PyTorch model (model.py), where it runs (devices.py), its dropout masks
(dropout_masks.py), and the engine (engine.py)."""
