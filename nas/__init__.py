"""Hardware-aware architecture search for efficient Vision Transformers."""

__version__ = "0.1.0"


def load(directory):
    """The standalone model exported to `directory` (arch.json + model.safetensors; no pickle)."""
    from nas.subnet import load as load_model

    return load_model(directory)
