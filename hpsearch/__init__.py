"""hpsearch: hyperparameter search for PyTorch, driven by one YAML study file."""

__version__ = "0.1.0"
