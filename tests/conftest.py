"""Shared test set-up: `gpu`-marked tests skip, saying why, when CUDA is absent; RAY_AUTH_MODE is restored after each test."""

from __future__ import annotations

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA: torch.cuda.is_available() is False on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def ray_auth_mode_restored():
    """Joining a cluster (`--ray-address`) sets RAY_AUTH_MODE=token in this process when a token exists
    (~/.ray/auth_token on a developer's machine); left set, it breaks every later local Ray start here."""
    import os

    saved = os.environ.get("RAY_AUTH_MODE")
    yield
    if saved is None:
        os.environ.pop("RAY_AUTH_MODE", None)
    else:
        os.environ["RAY_AUTH_MODE"] = saved
