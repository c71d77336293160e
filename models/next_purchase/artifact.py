"""Versioned model artifacts: ``<root>/<version>/`` plus a ``<root>/latest`` pointer file.

A version directory holds ``weights.pt`` (state dict), ``vocab.json`` (items and their statistics
at the end of the training data), ``config.json`` (the training config, including model and
encoder configs), ``metrics.json`` and ``data.json`` (the training file's sha256 and the
artifact ``format``), and the item-to-item table trained on the same orders
(`models.next_purchase.similar_items`: ``similar_items.npz``, ``similar_items.json``; absent in
a version trained before it). `load` rebuilds a `Recommender` from it, and refuses another
format; the worker loads the table beside it (`models.next_purchase.serving.ModelStore`).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import torch

from models.next_purchase.encoding import EncoderConfig, Vocab
from models.next_purchase.model import ModelConfig, NextPurchaseLSTM, Recommender
from models.next_purchase.similar_items import SimilarItems

FORMAT = 3  # 2: scoring time (``now``) and catalogue statistics as model input; 3: + repeat_linear
READS = (2, 3)  # a format-2 artifact loads as a model without the linear repeat term


def save(
    root: str | Path,
    model: NextPurchaseLSTM,
    vocab: Vocab,
    config: dict,
    data_sha256: str,
    metrics: dict,
    similar: SimilarItems | None = None,
) -> Path:
    """Write a new version directory (with ``similar``'s table when given), then point
    ``latest`` at it; returns the directory. Everything is written before the pointer moves:
    a worker never loads half a version."""
    root = Path(root)
    version = f"{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}-{data_sha256[:8]}"
    path = root / version
    path.mkdir(parents=True)
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, path / "weights.pt")
    files = {
        "vocab.json": {
            "items": vocab.items,
            "popularity": vocab.popularity,
            "recent": vocab.recent,
            "repeat_rate": vocab.repeat_rate,
            "week": vocab.week,
        },
        "config.json": config,
        "metrics.json": metrics,
        "data.json": {"sha256": data_sha256, "path": config.get("data"), "format": FORMAT},
    }
    for name, payload in files.items():
        (path / name).write_text(json.dumps(payload, indent=1, default=str))
    if similar is not None:
        similar.save(path)
    (root / "latest.tmp").write_text(version + "\n")
    (root / "latest.tmp").replace(root / "latest")
    return path


def resolve(path: str | Path) -> Path:
    """A version directory, or an artifact root whose ``latest`` names one."""
    path = Path(path)
    if (path / "latest").is_file():
        return path / (path / "latest").read_text().strip()
    return path


def load(path: str | Path, device: str = "cpu") -> Recommender:
    path = resolve(path)
    found = json.loads((path / "data.json").read_text()).get("format", 1)
    if found not in READS:
        raise ValueError(f"{path}: artifact format {found}, this code reads {READS}: retrain")
    config = json.loads((path / "config.json").read_text())
    raw_vocab = json.loads((path / "vocab.json").read_text())
    vocab = Vocab(**raw_vocab)
    # a format-2 artifact (before the linear repeat term) says nothing of it and has none
    model_config = ModelConfig(**{"repeat_linear": False, **config["model"]})
    model = NextPurchaseLSTM(model_config, vocab.popularity)
    model.load_state_dict(torch.load(path / "weights.pt", map_location="cpu", weights_only=True))
    return Recommender(model, vocab, EncoderConfig(**config["encoder"]), device=device)
