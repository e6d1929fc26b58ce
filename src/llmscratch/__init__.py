"""llmscratch: large language models from scratch in PyTorch."""

__version__ = "0.1.0"
