"""Weight files (safetensors) that carry a checksum of their own content.

safetensors refuses a file whose header or length is damaged, but not flipped bytes inside a
tensor: such a supernet loaded, scored lower and was exported without a word (issue 25). Every
weight file written here stores the SHA-256 of its tensors (names, dtypes, shapes and bytes) in
the safetensors metadata (`tensors_sha256`), and `load_weights` recomputes it. Files written
before carry no checksum and load as they are.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from nas.errors import NasError
from nas.io import atomic_path

CHECKSUM = "tensors_sha256"


def tensors_digest(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_weights(state: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write `state` atomically with its checksum in the file's metadata."""
    from safetensors.torch import save_file

    state = {name: tensor.detach().cpu().contiguous() for name, tensor in state.items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={**(metadata or {}), CHECKSUM: tensors_digest(state)})


def load_weights(path: str | Path, what: str = "safetensors file") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of a weight file; a damaged file (`what` names it in the message)
    or one whose content no longer matches its checksum is one NasError naming the file."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    try:
        state = load_file(str(path))
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
    except Exception as error:  # noqa: BLE001 — safetensors raises its own error types for corrupt files
        raise NasError(f"{path}: not a readable {what} ({type(error).__name__}: {str(error)[:200]})") from None
    expected = metadata.get(CHECKSUM)
    if expected is not None and tensors_digest(state) != expected:
        raise NasError(
            f"{path}: its content does not match the checksum written with it (bytes changed on disk or in a copy); "
            "restore the file or train / export it again"
        )
    return state, metadata
