"""``nextbest evaluate-similar`` and ``nextbest bench-similar`` end to end on small data: the
protocols' figures on a shop whose pairs are known, and every row of the bench printed. No
timing assertions: the figures are the bench's business (BENCHMARKS.md)."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from agents.tools import bench_similar
from models.next_purchase import evaluate_similar
from models.next_purchase.loading import load_orders
from tests.test_model_serving import retail_slice, save_tiny_model  # noqa: F401 - fixture

COLUMNS = ["InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice"]
PAIRS = [(f"{10001 + i}", f"{20001 + i}") for i in range(8)]
FILLERS = [f"{30000 + i}" for i in range(12)]  # one in every order, in turn


def pair_shop(path) -> None:
    """40 customers, each buying their pair (5 customers per pair) and a filler product in each
    of 4 orders, 20 days apart from 2011-01-03: the pair's other half is what a cart holding
    one half needs, and the pairs are the most popular products, all tied."""
    rows = []
    for c in range(40):
        pair = PAIRS[c % len(PAIRS)]
        for j in range(4):
            date = pd.Timestamp("2011-01-03") + pd.Timedelta(days=20 * j, hours=c % 24)
            for code in (*pair, FILLERS[(c + j) % len(FILLERS)]):
                rows.append((f"{c:03d}{j:02d}", code, "x", "2", str(date), "1.0", str(12000 + c)))
    frame = pd.DataFrame(rows, columns=[*COLUMNS, "CustomerID"])
    frame.to_csv(path, index=False)


def test_evaluate_similar_finds_the_pairs_popularity_cannot(tmp_path, capsys):
    data, out = tmp_path / "shop.csv", tmp_path / "similar.json"
    pair_shop(data)
    argv = ["--data", str(data), "--cutoff", "2011-02-01", "--json", str(out)]
    assert evaluate_similar.main(argv) == 0
    result = json.loads(out.read_text())
    completion = result["basket_completion"]
    assert completion["orders"] == 40 * 2  # 2 orders per customer after the cutoff
    assert completion["bought_together"]["hit@5"] > completion["popularity"]["hit@5"]
    nxt = result["next_order_hit@10"]
    assert nxt["customers"] == 40
    assert nxt["bought_together"] >= nxt["popularity"]
    printed = capsys.readouterr().out
    assert "next order" in printed and "basket completion" in printed
    stale = ["--data", str(data), "--cutoff", "2011-02-01", "--trained-before", "2011-03-01"]
    assert evaluate_similar.main(stale) == 2  # a table trained after the cutoff
    assert evaluate_similar.main(["--data", str(data), "--cutoff", "2011-06-01"]) == 1
    assert "nothing to evaluate" in capsys.readouterr().err


def test_evaluate_similar_refuses_a_model_that_saw_the_evaluated_orders(tmp_path, capsys):
    data = tmp_path / "shop.csv"
    pair_shop(data)
    version = save_tiny_model(tmp_path / "models", load_orders(data)[0], seed=1)  # no cutoff
    argv = ["--data", str(data), "--cutoff", "2011-02-01", "--artifact", str(version)]
    assert evaluate_similar.main(argv) == 2
    assert "has seen the orders" in capsys.readouterr().err


def test_bench_similar_prints_every_row(tmp_path, retail_slice, capsys):  # noqa: F811
    root = tmp_path / "models"
    save_tiny_model(root, load_orders(retail_slice)[0], seed=1, similar=True)
    argv = ["--model", str(root), "--data", str(retail_slice), "--cutoff", "2011-01-01"]
    assert bench_similar.main([*argv, "--carts", "40", "--batch", "16", "--no-http"]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"per cart: 40 real carts", printed)
    for row in ("with table", "without", "added"):
        assert re.search(rf"^  {row} +[+-]?[\d.]+ +[+-]?[\d.]+", printed, re.MULTILINE), row
    assert re.search(r"the lookup alone: [\d.]+ µs/cart", printed)
    assert bench_similar.main(["--model", str(tmp_path / "none"), "--no-http"]) == 1


@pytest.mark.parametrize("strong", [0.0, 0.5])
def test_ranked_fills_with_popular_products_outside_the_basket(tmp_path, strong):
    data = tmp_path / "shop.csv"
    pair_shop(data)
    table = evaluate_similar.SimilarItems.fit(load_orders(data)[0])
    picks = evaluate_similar.ranked(table, {"10001"}, 5, strong)
    assert picks[0] == "20001" and "10001" not in picks and len(picks) == len(set(picks)) == 5
    assert (
        evaluate_similar.popular(table, {"10001"}, 3)
        == [p for p in table.items if p != "10001"][:3]
    )
