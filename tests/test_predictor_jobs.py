"""`POST /predictors` jobs train on the merchant's file, in its format, with its product rule."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from agents.web.training import Job, Trainer
from models.next_purchase import artifact
from streams.merchants.catalog import CatalogError, MerchantRegistry, parse_merchant
from tests.test_train_interactions import interactions_file

TRAIN = "models.next_purchase.train"


def trainer(tmp_path, **merchants: dict) -> Trainer:
    registry = MerchantRegistry(
        {name: parse_merchant(name, {"currency": "EUR", **cfg}) for name, cfg in merchants.items()}
    )
    settings = SimpleNamespace(
        state_dir=tmp_path / "state",
        models_dir=tmp_path / "models",
        train_args="--max-epochs 1 --time-budget-s 20 --device cpu",
    )
    return Trainer(SimpleNamespace(settings=settings, registry=registry))


def test_the_command_follows_the_merchants_training_format_and_product_rule(tmp_path):
    jobs = trainer(
        tmp_path,
        retail={"training": {"data": "/data/retail.csv"}},
        personalize={
            "training": {"data": "/data/interactions.csv", "format": "interactions"},
            "product_pattern": "^SKU-",
        },
    )
    retail = jobs.command(Job("retail.1", "retail", "queued", "now"), "/data/retail.csv")
    assert retail[retail.index(TRAIN) + 1 :][:2] == ["--data", "/data/retail.csv"]
    assert "--product-pattern" not in retail
    own = jobs.command(Job("personalize.1", "personalize", "queued", "now"), "/d/i.csv")
    assert own[own.index(TRAIN) + 1 :][:4] == [
        "--interactions",
        "/d/i.csv",
        "--product-pattern",
        "^SKU-",
    ]


def test_unknown_training_format_is_rejected():
    with pytest.raises(CatalogError, match=r"merchants\.m\.training\.format: must be one of"):
        parse_merchant("m", {"currency": "EUR", "training": {"data": "x", "format": "parquet"}})


def test_a_job_trains_on_an_interactions_file(tmp_path):
    data = tmp_path / "interactions.csv"
    interactions_file(data, customers=30, orders=4)
    jobs = trainer(tmp_path, shop={"training": {"data": str(data), "format": "interactions"}})
    job = Job("shop.1", "shop", "queued", "now")
    asyncio.run(jobs._run(job, str(data)))
    assert job.status == "succeeded", job.error
    assert job.metrics["examples_train"] > 0
    assert artifact.load(job.artifact).encoder.product_pattern == "."
