"""The torch engine: the project's one PyTorch model (model.py), where it runs (devices.py), and the engine (engine.py)."""
