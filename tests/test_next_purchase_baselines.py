"""The field's next-basket baselines on tiny hand-made histories: each ranks what it should."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import sparse

from models.next_purchase import baselines
from models.next_purchase.encoding import Order, Vocab

DAY = 86400.0


def _orders(*baskets: tuple[float, list[str]]) -> list[Order]:
    """Orders from (day, products) pairs."""
    return [(day * DAY, products) for day, products in baskets]


def _vocab(*groups: list[list[Order]]) -> Vocab:
    return Vocab.build({str(i): h for i, h in enumerate(h for g in groups for h in g)})


def _order_of(scores: torch.Tensor, vocab: Vocab, row: int = 0) -> list[str]:
    """Row ``row``'s products, best first (the padding left out)."""
    return [vocab.items[i] for i in scores[row].argsort(descending=True, stable=True)[:-1]]


SCORED = [
    _orders((1, ["A", "B"]), (8, ["A", "C"]), (15, ["A"])),
    _orders((2, ["D"]), (9, ["D", "E"])),
]
OTHERS = [
    _orders((1, ["A", "B"]), (5, ["E", "F"])),
    _orders((3, ["C", "D", "F"]), (6, ["B", "G"])),
    _orders((4, ["G"])),
]
METHODS = {
    "tifu_knn": lambda h, v, o: baselines.tifu_knn(h, v, o, baselines.TifuKnn(neighbours=2)),
    "up_cf": lambda h, v, o: baselines.up_cf(h, v, o),
    "repurchase_cycle": lambda h, v, o: baselines.repurchase_cycle(h, v, 20 * DAY, o),
    "item_cooccurrence": lambda h, v, o: baselines.item_cooccurrence(h, v, o),
}


@pytest.mark.parametrize("method", METHODS)
def test_shape_padding_and_determinism(method):
    vocab = _vocab(SCORED, OTHERS)
    scores = METHODS[method](SCORED, vocab, OTHERS)
    assert scores.shape == (2, len(vocab)) and scores.dtype == torch.float64
    assert torch.isneginf(scores[:, 0]).all() and torch.isfinite(scores[:, 1:]).all()
    # a full ranking without ties, the same on a second run
    assert all(len(set(row[1:].tolist())) == len(vocab) - 1 for row in scores)
    assert torch.equal(scores, METHODS[method](SCORED, vocab, OTHERS))
    # the scored customers' rows do not depend on who else is scored with them
    alone = METHODS[method](SCORED[:1], vocab, [*SCORED[1:], *OTHERS])
    assert _order_of(alone, vocab) == _order_of(scores, vocab)


def test_ties_are_broken_by_popularity():
    primary = np.array([[0.0, 1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    scores = baselines._ranked(primary)
    # row 0: items 1 and 3 tie, then 2 and 4 with item 0 (padding) out; vocab order = popularity
    assert scores[0].argsort(descending=True, stable=True)[:4].tolist() == [1, 3, 2, 4]
    assert scores[1].argsort(descending=True, stable=True)[:4].tolist() == [1, 2, 3, 4]
    assert torch.isneginf(scores[:, 0]).all()


def test_cooccurrence_puts_the_partner_of_a_bought_item_first():
    """Y is always bought with X; Z and W are more popular. A customer who bought X gets X
    (similarity 1 to itself), then Y, ahead of the popular products."""
    customer = [_orders((1, ["X"]))]
    others = [_orders((d, ["X", "Y"])) for d in (1, 2)] + [
        _orders((d, ["Z", "W"]), (d + 1, ["Z", "W"])) for d in (1, 2, 3)
    ]
    vocab = _vocab(customer, others)
    assert vocab.items[1:3] == ["W", "Z"]  # the most popular
    for basis in ("orders", "customers"):
        params = baselines.ItemCooccurrence(basis=basis)
        scores = baselines.item_cooccurrence(customer, vocab, others, params)
        assert _order_of(scores, vocab)[:2] == ["X", "Y"]


def test_item_similarity_is_cosine_over_orders_or_customers():
    history = [_orders((1, ["P", "Q"]), (2, ["P"])), _orders((1, ["Q"]))]
    vocab = _vocab(history)
    lines = baselines._lines(history, vocab)
    p, q = vocab.index["P"], vocab.index["Q"]
    by_orders = baselines.item_similarity(lines, "orders")
    assert by_orders[p, q] == pytest.approx(1 / np.sqrt(2 * 2))  # orders: P 2, Q 2, both 1
    by_customers = baselines.item_similarity(lines, "customers")
    assert by_customers[p, q] == pytest.approx(1 / np.sqrt(1 * 2))  # customers: P 1, Q 2
    assert by_orders[p, p] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="basis"):
        baselines.item_similarity(lines, "sessions")


def test_tifu_vectors_decay_within_and_across_groups():
    """Orders X, Y, Z (oldest first), groups of 2 from the last: [Y, Z] and [X]."""
    history = [_orders((1, ["X"]), (2, ["Y"]), (3, ["Z"]))]
    vocab = _vocab(history)
    params = baselines.TifuKnn(group_size=2, within_decay=0.5, across_decay=0.25)
    vector = baselines.tifu_vectors(baselines._lines(history, vocab), params).toarray()[0]
    weight = {item: vector[vocab.index[item]] for item in "XYZ"}
    # last group: Z weight 1, Y 0.5, over 2 orders; over 2 groups
    assert weight["Z"] == pytest.approx(1 / 2 / 2)
    assert weight["Y"] == pytest.approx(0.5 / 2 / 2)
    # the older group (one order) decays by 0.25 across groups
    assert weight["X"] == pytest.approx(0.25 / 1 / 2)


def test_tifu_knn_borrows_from_its_nearest_neighbours_only():
    """The customer bought A; their nearest neighbour (A, B) lends B, a farther one (A, C, D,
    E) lends nothing with one neighbour; popular F fills after them."""
    customer = [_orders((1, ["A"]))]
    others = [
        _orders((1, ["A", "B"])),
        _orders((1, ["A", "C", "D", "E"])),
        *(_orders((d, ["F"])) for d in range(5)),
    ]
    vocab = _vocab(customer, others)
    params = baselines.TifuKnn(neighbours=1, alpha=0.5)
    ranked = _order_of(baselines.tifu_knn(customer, vocab, others, params), vocab)
    assert ranked[:3] == ["A", "B", "F"]
    only_own = baselines.tifu_knn(customer, vocab, others, baselines.TifuKnn(alpha=1.0))
    assert _order_of(only_own, vocab)[:2] == ["A", "F"]


def test_up_cf_ranks_own_products_then_the_similar_customers():
    customer = [_orders((1, ["A", "B"]), (2, ["A"]))]
    others = [
        _orders((1, ["A", "B", "C"])),
        *(_orders((d, ["D", "E"])) for d in range(4)),
    ]
    vocab = _vocab(customer, others)
    ranked = _order_of(baselines.up_cf(customer, vocab, others), vocab)
    assert ranked[:3] == ["A", "B", "C"]  # C from the similar customer, before popular D, E
    # recency 1: only the last order (A) is the customer's profile
    last = baselines.up_cf(customer, vocab, others, baselines.UpCf(recency=1, locality=1))
    assert _order_of(last, vocab)[0] == "A"


def test_repurchase_ranks_an_overdue_product_above_a_recently_bought_one():
    """P every 10 days, last on day 20; Q every 19 days, last on day 38. On day 41 P is two
    cycles in, Q just bought: P first, though Q is the more popular (personal frequency ties
    them, and popularity puts Q first)."""
    customer = [
        _orders((0, ["P", "Q"]), (10, ["P"]), (19, ["Q"]), (20, ["P"]), (38, ["Q"])),
    ]
    others = [_orders((d, ["Q"])) for d in range(3)]
    vocab = _vocab(customer, others)
    assert _order_of(baselines.personal_frequency(customer, vocab), vocab)[:2] == ["Q", "P"]
    scores = baselines.repurchase_cycle(customer, vocab, 41 * DAY, others)
    assert _order_of(scores, vocab)[:2] == ["P", "Q"]
    # two weeks later Q's cycle has come round and P is three cycles late: Q first
    later = baselines.repurchase_cycle(customer, vocab, 55 * DAY, others)
    assert _order_of(later, vocab)[:2] == ["Q", "P"]


def test_up_cf_similarity_is_an_asymmetric_cosine_one_to_oneself():
    """Profiles u = (1, 1, 0), v = (1, 0, 0): u.v 1, |u|^2 2, |v|^2 1."""
    profiles = sparse.csr_matrix(np.array([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]))
    for asymmetry, locality in ((0.0, 1), (0.5, 1), (0.75, 5)):
        params = baselines.UpCf(asymmetry=asymmetry, locality=locality)
        similarity = baselines.up_cf_similarity(profiles, 2, params)
        np.testing.assert_allclose(np.diag(similarity), [1.0, 1.0])
        assert similarity[0, 1] == pytest.approx((1 / 2**asymmetry) ** locality)
        assert similarity[1, 0] == pytest.approx((1 / 2 ** (1 - asymmetry)) ** locality)
    assert baselines.up_cf_similarity(profiles, 1, baselines.UpCf(asymmetry=0.5, locality=1))[
        0, 1
    ] == (
        pytest.approx(1 / np.sqrt(2))  # asymmetry 0.5: the cosine
    )
