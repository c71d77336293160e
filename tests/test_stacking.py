"""The learned re-ranker over the next-purchase model and the bought-together table."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.next_purchase import stacking
from models.next_purchase.encoding import EncoderConfig, Order, Vocab, encode_history
from models.next_purchase.model import ModelConfig, NextPurchaseLSTM, collate
from models.next_purchase.similar_items import SimilarItems, SimilarityConfig

DAY = 86400.0
PAIRS = [(f"{21000 + i}", f"{22000 + i}") for i in range(8)]  # (first, its partner)
FILLERS = [f"{23000 + i}" for i in range(5)]
SIMILAR = SimilarityConfig(min_support=2, shrinkage=0.0)


def shop() -> tuple[dict[str, list[Order]], list[str]]:
    """Customers 0-79 buy a pair's two products together (the table learns the pair); the
    held-out customers 80-159 buy a pair's first product, then its partner, new to them."""
    orders, held_out = {}, []
    for c in range(160):
        first, partner = PAIRS[c % len(PAIRS)]
        t = 1.3e9 + c * 600.0
        cust = f"c{c:03d}"
        if c < 80:
            orders[cust] = [(t, [first, partner]), (t + 9 * DAY, [first, partner])]
        else:
            held_out.append(cust)
            fill, other = FILLERS[c % 5], FILLERS[(c + 1) % 5]
            orders[cust] = [(t, [first, fill]), (t + 9 * DAY, [partner, other])]
    return orders, held_out


def test_identity_weights_rank_like_the_model():
    orders, _ = shop()
    vocab = Vocab.build(orders)
    config = stacking.StackingConfig()
    table = SimilarItems.fit(orders, SIMILAR)
    reranker = stacking.Reranker(config.identity, stacking.similarity_matrix(table, vocab), config)
    histories = [encode_history(seq[:1], vocab, EncoderConfig()) for seq in orders.values()]
    logits = torch.randn(len(histories), len(vocab), generator=torch.Generator().manual_seed(0))
    logits[:, 0] = -torch.inf
    scores = reranker.rerank(logits, histories)
    assert torch.equal(scores.argsort(dim=1, stable=True), logits.argsort(dim=1, stable=True))


def test_recent_counts_count_the_last_n_orders_holding_each_product():
    one, two, three = "21001", "21002", "21003"
    orders = {"a": [(1.3e9 + d * DAY, [p]) for d, p in enumerate([one, two, one, three])]}
    orders["b"] = [(1.3e9, [two, three])]
    vocab = Vocab.build(orders)
    histories = [encode_history(seq, vocab, EncoderConfig()) for seq in orders.values()]
    rows = stacking.Candidates.of_histories(histories)
    index = {"1": vocab.index[one], "2": vocab.index[two], "3": vocab.index[three]}
    last_two = rows.recent_counts(2, len(vocab)).toarray()
    assert last_two[0, index["1"]] == 1 and last_two[0, index["3"]] == 1
    assert last_two[0, index["2"]] == 0
    every = rows.recent_counts(10, len(vocab)).toarray()
    assert every[0, index["1"]] == 2 and every[0, index["2"]] == 1
    assert every[1, index["2"]] == 1 and every[1, index["3"]] == 1 and every[1].sum() == 2


def test_the_similarity_matrix_is_the_table_in_the_models_ids():
    orders, _ = shop()
    vocab = Vocab.build(orders)
    table = SimilarItems.fit(orders, SIMILAR)
    matrix = stacking.similarity_matrix(table, vocab)
    for first, partner in PAIRS:
        row = table.index[first]
        at = list(table.neighbours[row]).index(table.index[partner])
        assert matrix[vocab.index[first], vocab.index[partner]] == table.scores[row, at] > 0
    assert matrix.nnz == int((table.neighbours >= 0).sum())


def test_fit_learns_to_put_bought_together_partners_first_for_never_bought_products():
    orders, held_out = shop()
    vocab = Vocab.build(orders)
    torch.manual_seed(0)
    model = NextPurchaseLSTM(ModelConfig(use_lstm=False), vocab.popularity)
    config = stacking.StackingConfig(windows=(1,))
    weights, summary = stacking.fit(
        model, vocab, orders, held_out, EncoderConfig(), SIMILAR, config, seed=0
    )
    assert summary["examples"] == summary["discovery_examples"] == len(held_out)
    assert summary["loss_fitted"] < summary["loss_identity"]
    named = dict(zip(config.weight_names, weights, strict=True))
    assert named == pytest.approx(summary["weights"])
    assert named["together_1"] > 0
    table = stacking.similarity_matrix(SimilarItems.fit(orders, SIMILAR), vocab)
    reranker = stacking.Reranker(weights, table, config)
    first, partner = PAIRS[3]
    history = encode_history([(1.4e9, [first, FILLERS[0]])], vocab, EncoderConfig())
    with torch.no_grad():
        logits = model(collate([history]))
    scores = reranker.rerank(logits, [history])[0]
    bought = [vocab.index[first], vocab.index[FILLERS[0]]]
    scores[bought] = -torch.inf
    assert int(scores.argmax()) == vocab.index[partner]


def test_bad_config_and_weights_are_refused():
    with pytest.raises(ValueError):
        stacking.StackingConfig(windows=())
    with pytest.raises(ValueError):
        stacking.StackingConfig(windows=(0,))
    config = stacking.StackingConfig()
    with pytest.raises(ValueError):
        stacking.Reranker([1.0], np.zeros((1, 1)), config)
    with pytest.raises(ValueError):
        stacking.Reranker([float("nan")] * len(config.weight_names), np.zeros((1, 1)), config)
