"""Where next-purchase models are kept on disk. Free of torch: the settings and the REST API of
every worker read it, with or without a model to serve."""

from __future__ import annotations

from pathlib import Path


def merchant_model_root(models_dir: str | Path, merchant_id: str) -> Path:
    """Where ``POST /predictors`` writes a merchant's next-purchase model, and where the worker
    serves that merchant's carts from."""
    return Path(models_dir) / merchant_id / "next_purchase"
