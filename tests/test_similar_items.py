"""The item-to-item "bought together" model on hand-made baskets: the partner first, the
minimum support, shrinkage, the popularity fallback, determinism and the artifact round trip."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.next_purchase import similar_items
from models.next_purchase.encoding import Order
from models.next_purchase.similar_items import (
    POPULAR,
    STRONG_SIMILARITY,
    SimilarItems,
    SimilarityConfig,
)
from streams.decisions import BOUGHT_TOGETHER, NEXT_PURCHASE


def baskets(*groups: tuple[int, list[str]]) -> dict[str, list[Order]]:
    """``count`` orders of each product list, one customer per order."""
    orders: dict[str, list[Order]] = {}
    for count, products in groups:
        for _ in range(count):
            orders[f"c{len(orders)}"] = [(float(len(orders)), products)]
    return orders


SHOP = baskets(
    (10, ["TEAPOT", "CUP"]),  # the pair
    (6, ["CUP", "SAUCER"]),
    (20, ["CANDLE"]),  # the most popular, bought alone
    (4, ["TEAPOT", "CANDLE"]),
    (1, ["RARE-A", "RARE-B"]),  # together once: a cosine of 1
    (2, ["TEAPOT", "SPOON"]),  # under the minimum support of 3
)


def test_a_products_partner_comes_first_and_rare_pairs_are_dropped():
    model = SimilarItems.fit(SHOP, SimilarityConfig(min_support=3, shrinkage=10))
    teapot = model.similar("TEAPOT", n=3)
    assert [n.product_id for n in teapot.items][:2] == ["CUP", "CANDLE"]
    assert teapot.items[0].together == 10 and teapot.items[0].source == BOUGHT_TOGETHER
    assert teapot.items[0].score > teapot.items[1].score > 0
    assert teapot.items[2].source == POPULAR and teapot.items[2].score == 0.0  # the fill
    assert teapot.known_product and not teapot.cold_start
    assert "SPOON" not in [n.product_id for n in teapot.items if n.source == BOUGHT_TOGETHER]
    rare = model.similar("RARE-A", n=2)  # its only pair is under the minimum support
    assert rare.known_product and rare.cold_start
    assert [n.product_id for n in rare.items] == ["CANDLE", "CUP"]  # the most popular
    # with a minimum support of 1 and no shrinkage, the pair seen once is a perfect match
    loose = SimilarItems.fit(SHOP, SimilarityConfig(min_support=1, shrinkage=0))
    assert loose.similar("RARE-A", n=1).items[0].product_id == "RARE-B"
    assert loose.similar("RARE-A", n=1).items[0].score == pytest.approx(1.0)


def test_shrinkage_ranks_a_well_supported_pair_above_a_thin_perfect_one():
    orders = baskets(
        (3, ["LAMP", "BULB"]),  # always together, but only 3 orders: cosine 1
        (60, ["LAMP", "SHADE"]),
        (20, ["SHADE"]),  # SHADE also sells alone: cosine ~0.86
        (100, ["LAMP"]),
    )
    plain = SimilarItems.fit(orders, SimilarityConfig(min_support=3, shrinkage=0))
    shrunk = SimilarItems.fit(orders, SimilarityConfig(min_support=3, shrinkage=10))
    assert plain.similar("BULB", n=1).items[0].product_id == "LAMP"
    assert [n.product_id for n in plain.similar("LAMP", n=2).items] == ["SHADE", "BULB"]
    bulb, shade = (shrunk.similar(p, n=1).items[0] for p in ("BULB", "SHADE"))
    assert shade.score > bulb.score  # 60 orders together outweigh a cosine of 1 over 3


def test_unknown_products_get_the_most_popular_ones_normalised_and_excluded():
    model = SimilarItems.fit(SHOP)
    new = model.similar("NEW-THING", n=3, exclude={"CANDLE"})
    assert not new.known_product and new.cold_start
    # CUP and TEAPOT are in 16 orders each: the tie goes by product id
    assert [n.product_id for n in new.items] == ["CUP", "TEAPOT", "SAUCER"]
    assert all(n.source == POPULAR for n in new.items)
    assert model.similar(" cup ", n=1).items[0].product_id == "TEAPOT"  # ids as the loader's
    assert len(model.similar("CUP", n=100).items) == len(model) - 1  # never itself


def test_a_basket_gets_its_products_strong_neighbours_best_summed_first():
    model = SimilarItems.fit(SHOP)
    assert model.bought_with({"TEAPOT"}, n=5, min_score=0.0) == ["CUP", "CANDLE"]
    strongest = model.similar("TEAPOT", n=1).items[0].score
    assert model.bought_with({"TEAPOT"}, n=5, min_score=strongest) == ["CUP"]
    assert model.bought_with({"TEAPOT"}, n=5, min_score=strongest + 1e-6) == []
    # CUP is a neighbour of both: its summed similarity puts it first, the basket is left out
    assert model.bought_with({"TEAPOT", "SAUCER"}, n=5, min_score=0.0)[0] == "CUP"
    assert model.bought_with({"TEAPOT", "CUP"}, n=5, min_score=0.0, exclude={"CANDLE"}) == [
        "SAUCER"
    ]
    assert model.bought_with({"UNKNOWN", "POST"}, n=5, min_score=0.0) == []


def test_fitting_is_deterministic_whatever_the_order_of_customers():
    shuffled = list(SHOP.items())
    random.Random(3).shuffle(shuffled)
    first, second = SimilarItems.fit(SHOP), SimilarItems.fit(dict(shuffled))
    assert first.items == second.items
    for name in ("popularity", "neighbours", "scores", "together"):
        assert np.array_equal(getattr(first, name), getattr(second, name)), name


def test_the_table_round_trips_through_its_files(tmp_path):
    model = SimilarItems.fit(SHOP, SimilarityConfig(neighbours=2, min_support=2))
    assert not similar_items.present(tmp_path) and similar_items.load_optional(tmp_path) is None
    model.save(tmp_path)
    loaded = similar_items.load(tmp_path)
    loaded.check()
    assert loaded.items == model.items and loaded.config == model.config
    assert loaded.neighbours.shape == (len(model), 2)
    for product in model.items:
        assert loaded.similar(product, n=4) == model.similar(product, n=4)
    (tmp_path / similar_items.META).write_text('{"format": 99}')
    with pytest.raises(ValueError, match="format 99"):
        similar_items.load(tmp_path)


def test_a_broken_table_fails_its_check():
    model = SimilarItems.fit(SHOP)
    model.neighbours[0, 0] = len(model)  # points past the catalogue
    with pytest.raises(ValueError, match="out of range"):
        model.check()
    with pytest.raises(ValueError):
        SimilarityConfig(min_support=0)


def test_the_add_on_sources_are_the_record_contracts():
    from typing import get_args

    from agents.runtime.settings import Settings
    from schemas.events import AddOnSource

    assert set(get_args(AddOnSource)) == {BOUGHT_TOGETHER, NEXT_PURCHASE}
    assert Settings().add_on_min_similarity == STRONG_SIMILARITY


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.lists(st.sampled_from("ABCDEFGHIJ"), min_size=1, max_size=5), max_size=60),
    st.sets(st.sampled_from("ABCDEFGHIJKL"), max_size=6),
    st.sets(st.sampled_from("ABCDEFGHIJ"), max_size=3),
    st.integers(1, 8),
    st.sampled_from([0.0, 0.05, 0.15, 0.3]),
)
def test_bought_with_ranks_by_summed_strong_similarity(
    orders: list[list[str]], cart: set[str], exclude: set[str], n: int, min_score: float
) -> None:
    """Against a reading of the definition: every neighbour with a pair similarity of at least
    ``min_score`` to a cart product, by the sum of those similarities (float64, in the cart's
    order), ties to the more popular; none of the cart or ``exclude``."""
    model = SimilarItems.fit(
        {f"c{i}": [(float(i), products)] for i, products in enumerate(orders)},
        SimilarityConfig(neighbours=4, min_support=1, shrinkage=1.0),
    )
    rows = [model.index[p] for p in sorted(cart) if p in model.index]
    summed: dict[int, float] = {}
    for row in rows:
        for j, score in zip(model.neighbours[row], model.scores[row], strict=True):
            if j >= 0 and score >= np.float32(min_score):
                summed[int(j)] = summed.get(int(j), 0.0) + float(score)
    ranked = sorted(summed, key=lambda j: (-summed[j], j))
    expected = [model.items[j] for j in ranked if model.items[j] not in cart | exclude][:n]
    assert model.bought_with(sorted(cart), n, min_score, exclude) == expected
