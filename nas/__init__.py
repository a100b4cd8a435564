"""Hardware-aware architecture search for efficient Vision Transformers."""

__version__ = "0.1.0"
