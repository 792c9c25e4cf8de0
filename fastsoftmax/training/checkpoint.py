"""Checkpoints without pickle: a folder with ``model.pt`` (the state dict, read back with
``torch.load(weights_only=True)``) and ``config.json`` (model, data, loss and training configs
plus anything else JSON-serialisable, e.g. metrics)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

import torch

from ..models import ModelConfig, Recommender, build_model

WEIGHTS_FILE = "model.pt"
CONFIG_FILE = "config.json"
FORMAT_VERSION = 1


def save_checkpoint(directory: str | os.PathLike, model: Recommender,
                    extra: Optional[dict[str, Any]] = None) -> Path:
    """Write ``model`` to ``directory`` (created if needed). ``extra``: more JSON entries
    (e.g. {"data": ..., "loss": ..., "train": ..., "metrics": ...})."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    torch.save(state, path / WEIGHTS_FILE)
    payload = {"format": FORMAT_VERSION, "model": model.config.to_dict(), **(extra or {})}
    text = json.dumps(payload, indent=2, sort_keys=True)  # fails here, not later, if not JSON
    (path / CONFIG_FILE).write_text(text + "\n")
    return path


def load_checkpoint(directory: str | os.PathLike,
                    map_location: str | torch.device = "cpu") -> tuple[Recommender, dict]:
    """Rebuild the model saved in ``directory``; returns (model in eval mode, config dict)."""
    path = Path(directory)
    config_path, weights_path = path / CONFIG_FILE, path / WEIGHTS_FILE
    for required in (config_path, weights_path):
        if not required.is_file():
            raise FileNotFoundError(f"not a fastsoftmax checkpoint: {required} is missing")
    meta = json.loads(config_path.read_text())
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(f"{config_path}: unsupported checkpoint format {meta.get('format')!r}")
    model = build_model(ModelConfig.from_dict(meta["model"]))
    state = torch.load(weights_path, map_location=map_location, weights_only=True)
    model.load_state_dict(state)
    model.to(map_location)
    model.eval()
    return model, meta
