"""`nextbest train --interactions`: an Amazon Personalize interactions CSV as training data."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from models.next_purchase import artifact, train
from models.next_purchase.encoding import EncoderConfig
from models.next_purchase.interactions import EVERY_ITEM, load_interactions
from models.next_purchase.interactions import main as interactions_main
from models.next_purchase.loading import file_sha256

ITEMS = [f"sku-{i}" for i in range(30)]  # not UCI stock codes: the product rule matters
DAY = 86400.0
START = pd.Timestamp("2024-01-01").value / 1e9


def interactions_file(path, customers: int = 60, orders: int = 8, seed: int = 0) -> dict:
    """Every customer re-buys two personal staples among random extras, one order every ~9
    days, and views some items (rows that are not purchases). Returns the staples."""
    rng = np.random.default_rng(seed)
    rows, staples = [], {}
    for c in range(customers):
        user = f"user-{c}"
        staples[user] = [str(s).upper() for s in rng.choice(ITEMS[10:], size=2, replace=False)]
        for j in range(orders):
            t = int(START + j * 9 * DAY + c * 3600)
            extras = rng.choice(ITEMS[:10], size=2, replace=False).tolist()
            for item in [s.lower() for s in staples[user]] + extras:
                rows.append((user, item, t, "Purchase"))
            rows.append((user, ITEMS[j % 30], t - 600, "View"))
    rows.append(("", "sku-1", int(START), "Purchase"))  # no user: skipped and counted
    frame = pd.DataFrame(rows, columns=["USER_ID", "ITEM_ID", "TIMESTAMP", "EVENT_TYPE"])
    frame.sample(frac=1.0, random_state=seed).to_csv(path, index=False)
    return staples


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("interactions")
    data = tmp / "interactions.csv"
    staples = interactions_file(data)
    torch.set_num_threads(1)
    argv = ["--interactions", str(data), "--out", str(tmp / "models"), "--seed", "1"]
    assert train.main([*argv, "--max-epochs", "8", "--lr", "0.01", "--device", "cpu"]) == 0
    return tmp, data, staples


def test_trains_and_writes_an_artifact_that_loads(trained):
    tmp, data, staples = trained
    path = artifact.resolve(tmp / "models")
    assert json.loads((path / "data.json").read_text())["sha256"] == file_sha256(data)
    config = json.loads((path / "config.json").read_text())
    assert (config["data"], config["data_format"]) == (str(data), "interactions")
    assert config["encoder"]["product_pattern"] == EVERY_ITEM
    report = json.loads((path / "metrics.json").read_text())["load_report"]
    assert (report["kept"], report["other_event_type"], report["missing_id"]) == (
        60 * 8 * 4,
        60 * 8,
        1,
    )
    assert report["customers"] == 60 and report["orders"] == 60 * 8

    rec = artifact.load(tmp / "models")
    assert rec.encoder == EncoderConfig(product_pattern=EVERY_ITEM)
    assert set(rec.vocab.items[1:]) == {item.upper() for item in ITEMS}
    customers = sorted(staples)
    histories = [
        [(START + j * 9 * DAY, [*staples[c], ITEMS[j % 10]]) for j in range(3)] for c in customers
    ]
    scored = rec.score_batch(histories, k=2)
    assert not any(s.cold_start for s in scored)
    hits = [set(s.items) == set(staples[c]) for s, c in zip(scored, customers, strict=True)]
    assert np.mean(hits) > 0.8  # it learned the staples from the interactions


def test_the_product_rule_is_checked_and_can_narrow_the_items(tmp_path, capsys):
    data = tmp_path / "interactions.csv"
    interactions_file(data, customers=20, orders=4)
    with pytest.raises(SystemExit):
        train.parse_args(["--interactions", str(data), "--product-pattern", "(["])
    assert "--product-pattern" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # one source of training data
        train.parse_args(["--interactions", str(data), "--data", str(data)])
    cfg = train.parse_args(["--interactions", str(data), "--product-pattern", "^NOPE"])
    assert cfg.encoder.product_pattern == "^NOPE"
    assert train.main(["--interactions", str(data), "--product-pattern", "^NOPE"]) == 1
    assert "no orders to train on" in capsys.readouterr().err


def test_loader_counts_items_outside_the_product_rule(tmp_path):
    data = tmp_path / "interactions.csv"
    interactions_file(data, customers=5, orders=2)
    _, every = load_interactions(data)
    orders, report = load_interactions(data, product_pattern=r"^SKU-\d$")  # sku-0 ... sku-9
    assert report.non_product > 0
    assert report.kept + report.non_product == every.kept
    assert all(len(p) == 5 for seq in orders.values() for _, products in seq for p in products)
    with pytest.raises(SystemExit):
        interactions_main([str(data), "--product-pattern", "(["])
