"""The simple baselines of the evaluation protocol, as full-catalogue score matrices.

Each returns float64 scores of shape (customers, catalogue): higher ranks first, the padding id
is -inf, and popularity (orders holding the item, then product id: the `Vocab` order) breaks
every tie, so rankings are deterministic. Personal scores use the customer's whole history.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain

import numpy as np
import pandas as pd
import torch
from scipy import sparse

from models.next_purchase.encoding import Order, Vocab

_DAY = 86400.0


def _popularity(vocab: Vocab) -> torch.Tensor:
    return torch.arange(len(vocab), 0, -1, dtype=torch.float64)  # vocab is sorted by it


def _rows(scores: torch.Tensor, n: int) -> torch.Tensor:
    out = scores.repeat(n, 1) if scores.dim() == 1 else scores
    out[:, 0] = -torch.inf
    return out


def popular_orders(histories: list[list[Order]], vocab: Vocab) -> torch.Tensor:
    """Most popular by number of orders holding the item."""
    return _rows(_popularity(vocab), len(histories))


def popular_units(
    histories: list[list[Order]], vocab: Vocab, units: dict[str, float]
) -> torch.Tensor:
    """Most popular by units sold (``units``: product -> quantity before the cutoff)."""
    v = len(vocab)
    by_units = sorted(range(1, v), key=lambda i: (-units.get(vocab.items[i], 0.0), i))
    scores = torch.zeros(v, dtype=torch.float64)
    scores[by_units] = torch.arange(v - 1, 0, -1, dtype=torch.float64)
    return _rows(scores, len(histories))


def order_counts(histories: list[list[Order]], vocab: Vocab) -> torch.Tensor:
    """(customers, catalogue) how many of each customer's orders hold each item."""
    counts = torch.zeros(len(histories), len(vocab), dtype=torch.float64)
    for row, orders in enumerate(histories):
        for _, products in orders:
            counts[row, [vocab.index[p] for p in products if p in vocab.index]] += 1.0
    return counts


def personal_frequency(histories: list[list[Order]], vocab: Vocab) -> torch.Tensor:
    """The customer's items by number of their orders holding them, then popularity fill."""
    freq = order_counts(histories, vocab)
    return _rows(freq * (len(vocab) + 1) + _popularity(vocab), len(histories))


def last_basket(histories: list[list[Order]], vocab: Vocab) -> torch.Tensor:
    """The items of the customer's last order, by popularity, then popularity fill."""
    last = torch.zeros(len(histories), len(vocab), dtype=torch.float64)
    for row, orders in enumerate(histories):
        if orders:
            last[row, [vocab.index[p] for p in orders[-1][1] if p in vocab.index]] = 1.0
    return _rows(last * (len(vocab) + 1) + _popularity(vocab), len(histories))


# The field's next-basket baselines. Each scores the customers of ``histories`` (rows of the
# result); ``others`` are the rest of the shop's customers before the cutoff, whose orders a
# method may learn from (neighbours, item similarity, product intervals) but which are not
# scored. Hyper-parameters: the dataclass defaults, chosen on the UCI Online Retail file by
# `nextbest evaluate --tune-baselines --cutoff 2011-07-01` (the best of `evaluate.TUNING_GRID`
# by all customers' MRR at that cutoff, never at the reported 2011-10-01; BENCHMARKS.md has the
# grid's figures).


@dataclass(frozen=True)
class TifuKnn:
    """TIFU-KNN (Hu et al., SIGIR 2020). A customer's orders are cut, from their last one
    backwards, into groups of ``group_size`` (the oldest group may be shorter); a group's vector
    is the mean of its orders, order ``j`` from the group's end weighted ``within_decay ** j``;
    the customer's vector the mean of the groups, group ``g`` from the last weighted
    ``across_decay ** g``. Score = ``alpha`` * own vector + (1 - ``alpha``) * the mean vector of
    the ``neighbours`` customers nearest by cosine (those with a positive similarity)."""

    group_size: int = 7
    within_decay: float = 1.0
    across_decay: float = 0.4
    neighbours: int = 300
    alpha: float = 0.5


@dataclass(frozen=True)
class UpCf:
    """UP-CF@r (Faggioli et al., UMAP 2020). A customer's profile holds, per product, the share
    of their last ``recency`` orders holding it (None: all orders). Similarity of customers u, v:
    asymmetric cosine ``u.v / (|u|^2 ** asymmetry * |v|^2 ** (1 - asymmetry))`` (the paper's
    set sizes, here over the profiles; asymmetry 0.5 is the cosine) raised to the ``locality``;
    score = the similarity-weighted sum of every customer's profile, the customer's own
    included (similarity 1), which is where its repeat behaviour comes from."""

    recency: int | None = None
    asymmetry: float = 0.25
    locality: float = 5.0


@dataclass(frozen=True)
class RepurchaseCycle:
    """Time-aware repurchase: the customer's products weighted by how likely the product is
    bought again at all and by how due it is at ``now``.

    A product's cycle for a customer is their own mean interval between orders holding it,
    shrunk towards the product's typical interval (the median over every customer who bought it
    at least twice; the median over all products where nobody did) with ``shrinkage`` pseudo
    intervals. Dueness x = days since the customer last bought it / that cycle; score = times
    bought * the product's repeat rate (`Vocab.repeat_rate`: how often a customer who had bought
    it bought it again) * (``floor`` + (1 - ``floor``) * exp(-ln(x)^2 / (2 ``width``^2))):
    highest when a cycle has just elapsed, lower when bought recently or long overdue; ``floor``
    1 leaves the dueness out.
    """

    shrinkage: float = 1.0
    width: float = 1.0
    floor: float = 0.9


@dataclass(frozen=True)
class ItemCooccurrence:
    """Item-to-item co-occurrence: cosine similarity of products over the ``basis`` (``orders``:
    products bought in one order; ``customers``: bought by one customer); score = the customer's
    counts (orders holding each product among their last ``recent_orders``, None: all) times
    that similarity (a product's similarity to itself is 1)."""

    basis: str = "customers"
    recent_orders: int | None = 10


@dataclass(frozen=True)
class _Lines:
    """One entry per (order, product) of the scored customers (rows 0..n-1), then the others'."""

    customer: np.ndarray  # the customer's row
    order: np.ndarray  # the order's number over all customers
    back: np.ndarray  # how many of the customer's orders came after this one (0: their last)
    orders_of_customer: np.ndarray  # the customer's number of orders
    days: np.ndarray  # the order's time in days
    item: np.ndarray
    customers: int
    orders: int
    items: int

    def matrix(self, weights: np.ndarray, by_order: bool = False) -> sparse.csr_matrix:
        """(customers, catalogue) sum of ``weights`` per customer and product; ``by_order``:
        (orders, catalogue), per order instead."""
        rows, n_rows = (self.order, self.orders) if by_order else (self.customer, self.customers)
        return sparse.csr_matrix((weights, (rows, self.item)), shape=(n_rows, self.items))


def _lines(
    histories: Sequence[list[Order]], vocab: Vocab, others: Sequence[list[Order]] = ()
) -> _Lines:
    customer, order, back, count, days, item = ([] for _ in range(6))
    n_orders = 0
    for row, orders in enumerate(chain(histories, others)):
        for j, (seconds, products) in enumerate(orders):
            ids = [vocab.index[p] for p in products if p in vocab.index]
            item.extend(ids)
            for column, value in (
                (customer, row),
                (order, n_orders),
                (back, len(orders) - 1 - j),
                (count, len(orders)),
                (days, seconds / _DAY),
            ):
                column.extend([value] * len(ids))
            n_orders += 1
    return _Lines(
        *(np.asarray(a, dtype=np.int64) for a in (customer, order, back, count)),
        np.asarray(days, dtype=np.float64),
        np.asarray(item, dtype=np.int64),
        customers=len(histories) + len(others),
        orders=n_orders,
        items=len(vocab),
    )


def _ranked(primary: np.ndarray) -> torch.Tensor:
    """Scores that rank like ``primary`` (rounded to 10 significant digits of each row's
    largest value, so that summation order cannot reorder equals), ties by popularity."""
    scale = np.abs(primary).max(axis=1, keepdims=True)
    rounded = np.round(primary / np.where(scale > 0, scale, 1.0), 10)
    order = np.argsort(-rounded, axis=1, kind="stable")  # vocab order: popularity breaks ties
    out = np.empty_like(primary, dtype=np.float64)
    np.put_along_axis(out, order, np.arange(primary.shape[1], 0, -1, dtype=np.float64), axis=1)
    return _rows(torch.from_numpy(out), len(out))


def _row_normalised(m: sparse.csr_matrix) -> sparse.csr_matrix:
    norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel())
    return sparse.diags(1.0 / np.where(norms > 0, norms, 1.0)) @ m


def tifu_vectors(lines: _Lines, p: TifuKnn) -> sparse.csr_matrix:
    """(customers, catalogue) TIFU-KNN's time-decayed frequency vector of every customer."""
    m = p.group_size
    group, within = np.divmod(lines.back, m)
    group_orders = np.minimum(m, lines.orders_of_customer - group * m)
    groups = -(-lines.orders_of_customer // m)
    weights = p.within_decay**within / group_orders * p.across_decay**group / groups
    return lines.matrix(weights)


def tifu_knn(
    histories: Sequence[list[Order]],
    vocab: Vocab,
    others: Sequence[list[Order]] = (),
    params: TifuKnn = TifuKnn(),
) -> torch.Tensor:
    """TIFU-KNN (see `TifuKnn`), popularity filling and breaking ties."""
    n = len(histories)
    vectors = tifu_vectors(_lines(histories, vocab, others), params)
    unit = _row_normalised(vectors)
    similarity = (unit[:n] @ unit.T).toarray()
    similarity[np.arange(n), np.arange(n)] = -np.inf  # a customer is not their own neighbour
    k = min(params.neighbours, similarity.shape[1])
    nearest = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    near = np.take_along_axis(similarity, nearest, axis=1) > 0
    pick = sparse.csr_matrix(
        (np.full(int(near.sum()), 1.0 / k), (np.nonzero(near)[0], nearest[near])),
        shape=similarity.shape,
    )
    own = vectors[:n].toarray()
    return _ranked(params.alpha * own + (1.0 - params.alpha) * (pick @ vectors).toarray())


def up_cf_similarity(profiles: sparse.csr_matrix, n: int, params: UpCf) -> np.ndarray:
    """(n, customers) UP-CF's similarity of the first ``n`` profiles to every profile."""
    sizes = np.asarray(profiles.multiply(profiles).sum(axis=1)).ravel()  # |u|^2
    sizes = np.where(sizes > 0, sizes, 1.0)
    similarity = (profiles[:n] @ profiles.T).toarray()
    similarity /= sizes[:n, None] ** params.asymmetry * sizes[None, :] ** (1 - params.asymmetry)
    return similarity**params.locality


def up_cf(
    histories: Sequence[list[Order]],
    vocab: Vocab,
    others: Sequence[list[Order]] = (),
    params: UpCf = UpCf(),
) -> torch.Tensor:
    """UP-CF@r (see `UpCf`), popularity filling and breaking ties."""
    lines = _lines(histories, vocab, others)
    window = lines.orders_of_customer if params.recency is None else params.recency
    recent = lines.back < window
    share = np.where(recent, 1.0 / np.minimum(window, lines.orders_of_customer), 0.0)
    profiles = lines.matrix(share)
    similarity = up_cf_similarity(profiles, len(histories), params)
    return _ranked(np.asarray(profiles.T @ similarity.T).T)


def repurchase_cycle(
    histories: Sequence[list[Order]],
    vocab: Vocab,
    now: float,
    others: Sequence[list[Order]] = (),
    params: RepurchaseCycle = RepurchaseCycle(),
) -> torch.Tensor:
    """Time-aware repurchase (see `RepurchaseCycle`) as of ``now`` (epoch s), popularity fill."""
    n = len(histories)
    lines = _lines(histories, vocab, others)
    pairs = (
        pd.DataFrame({"customer": lines.customer, "item": lines.item, "day": lines.days})
        .groupby(["customer", "item"], sort=False)["day"]
        .agg(["min", "max", "count"])
        .reset_index()
    )
    repeated = pairs["count"] > 1
    own = ((pairs["max"] - pairs["min"]) / (pairs["count"] - 1).clip(lower=1)).clip(lower=1.0)
    typical_of = own[repeated].groupby(pairs["item"][repeated]).median()
    fallback = float(own[repeated].median()) if repeated.any() else 30.0
    typical = pairs["item"].map(typical_of).fillna(fallback).to_numpy()
    weight = (pairs["count"] - 1).to_numpy(dtype=np.float64)
    cycle = (weight * own.to_numpy() + params.shrinkage * typical) / (weight + params.shrinkage)
    due = np.maximum(now / _DAY - pairs["max"].to_numpy(), 1e-3) / cycle
    kernel = np.exp(-(np.log(due) ** 2) / (2 * params.width**2))
    customer, item = pairs["customer"].to_numpy(), pairs["item"].to_numpy()
    likely = pairs["count"].to_numpy() * np.asarray(vocab.repeat_rate, dtype=np.float64)[item]
    score = likely * (params.floor + (1 - params.floor) * kernel)
    scored = customer < n
    primary = np.zeros((n, len(vocab)))
    primary[customer[scored], item[scored]] = score[scored]
    return _ranked(primary)


def item_similarity(lines: _Lines, basis: str) -> np.ndarray:
    """(catalogue, catalogue) cosine similarity of products over orders or customers."""
    if basis not in ("orders", "customers"):
        raise ValueError(f"basis must be 'orders' or 'customers', not {basis!r}")
    held = lines.matrix(np.ones(len(lines.item)), by_order=basis == "orders")
    held.data[:] = 1.0  # a customer's several orders of a product count once
    together = (held.T @ held).toarray()
    norms = np.sqrt(np.diag(together))
    norms = np.where(norms > 0, norms, 1.0)
    return together / norms[:, None] / norms[None, :]


def item_cooccurrence(
    histories: Sequence[list[Order]],
    vocab: Vocab,
    others: Sequence[list[Order]] = (),
    params: ItemCooccurrence = ItemCooccurrence(),
) -> torch.Tensor:
    """Item-to-item co-occurrence (see `ItemCooccurrence`), popularity filling and ties."""
    n = len(histories)
    lines = _lines(histories, vocab, others)
    similarity = item_similarity(lines, params.basis)
    recent = lines.customer < n
    if params.recent_orders is not None:
        recent &= lines.back < params.recent_orders
    counts = lines.matrix(recent.astype(np.float64))[:n]
    return _ranked(np.asarray(counts @ similarity))
