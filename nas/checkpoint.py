"""The checkpoint of a supernet training run: written after every epoch, read on --resume.

Run directory: `supernet.safetensors` (weights), `train_state.pt` (optimizer, and
the fp16 gradient scaler's state; tensors and plain containers only, loaded with weights_only=True),
`train_state.json` (progress and final accuracies), `split.json`, `config.yaml`.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
import yaml

from nas.config import TrainConfig
from nas.data import check_split
from nas.dataset import Dataset
from nas.errors import NasError
from nas.io import atomic_path, write_json
from nas.rundir import CONFIG, SPLIT, STATE, STATE_JSON, WEIGHTS
from nas.supernet import SuperNet
from nas.weights import load_weights, save_weights


def save_checkpoint(
    net: SuperNet,
    optimizer: torch.optim.Optimizer,
    out: Path,
    history: list[dict],
    final: dict | None = None,
    scaler=None,
) -> None:
    save_weights(net.state_dict(), out / WEIGHTS)
    with atomic_path(out / STATE) as tmp:
        torch.save({"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler else None}, tmp)
    # Written last: it names the epoch that the two files above belong to.
    write_json(out / STATE_JSON, {"epochs_done": len(history), "history": history, "final": final})


def load_checkpoint(
    net: SuperNet, optimizer: torch.optim.Optimizer, out: Path, run_config: dict, dataset: Dataset, scaler=None
) -> tuple[int, list[dict]]:
    saved = yaml.safe_load((out / CONFIG).read_text())
    for key in ("space", "data"):
        if saved.get(key) != run_config[key]:
            raise NasError(f"{out / CONFIG}: the run was started with another {key}; resume with the same settings")
    defaults = asdict(TrainConfig())  # a setting added after the run started: it had the default
    changed = [k for k, v in run_config["train"].items() if saved["train"].get(k, defaults.get(k)) != v]
    if changed:
        raise NasError(
            f"{out / CONFIG}: --resume needs the same training settings; changed: "
            + ", ".join(f"{k} ({saved['train'].get(k)} -> {run_config['train'][k]})" for k in changed)
        )
    check_split(dataset, out / SPLIT)
    try:
        state = json.loads((out / STATE_JSON).read_text())
        net.load_state_dict(load_weights(out / WEIGHTS)[0])
        saved_state = torch.load(out / STATE, map_location="cpu", weights_only=True)
        optimizer.load_state_dict(saved_state["optimizer"])
        if scaler is not None and saved_state.get("scaler"):  # fp16: the loss scale it had reached
            scaler.load_state_dict(saved_state["scaler"])
    except Exception as error:  # noqa: BLE001 — OSError, JSON, torch and safetensors (SafetensorError) errors alike
        raise NasError(
            f"{out}: the training checkpoint cannot be read ({type(error).__name__}: {str(error)[:200]}); "
            "start a new run (another --out)"
        ) from None
    return state["epochs_done"], state["history"]
