"""The one encoding the model reads: the catalogue it scores, and customers' order histories
as model input.

- `Vocab`: the products seen in training, with their catalogue statistics (`ItemStats`) at the
  end of the training orders; `ItemTimeline` gives those statistics at any earlier moment.
- `encode_history`: one customer's orders (`Order`, the worker's state shape) as an
  `EncodedHistory`; `encode_batch` the same for a serving micro-batch at once, bit for bit, and
  `encode_examples` for training prefixes, each at its own moment's statistics.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import chain, repeat

import numpy as np

from streams.state.products import (
    MAX_HISTORY_PRODUCTS,
    MAX_ORDER_PRODUCTS,
    MAX_ORDERS,
    is_product,
    normalize_product,
    order_products,
    orders_to_keep,
)

Order = tuple[float, list[str]]
"""(epoch seconds, [product_id, ...]), the worker's per-order state."""

RECENT_DAYS = 30
WEEK_DAYS = 7
SMOOTHING = 10  # pseudo-trials pulling an item's repeat rate towards the catalogue's
_DAY = 86400.0


CATALOGUE_FEATURES = 5


@dataclass(eq=False)
class ItemStats:
    """Catalogue statistics as of one moment, from the orders of the whole days before it.

    Per item: ``popularity``, orders holding it; ``recent`` and ``week``, the same over the last
    `RECENT_DAYS` and `WEEK_DAYS` days; ``repeat_rate``, how often a customer who had bought it
    bought it again in a later order (smoothed towards the catalogue-wide rate).
    """

    popularity: np.ndarray
    recent: np.ndarray
    week: np.ndarray
    repeat_rate: np.ndarray
    _features: np.ndarray | None = field(default=None, init=False, repr=False)

    def features(self) -> np.ndarray:
        """(n_items, CATALOGUE_FEATURES): what the model reads about every item at this moment."""
        if self._features is None:
            self._features = np.stack(
                [
                    np.log1p(self.popularity) / 10.0,
                    np.log1p(self.recent) / 5.0,
                    np.log1p(self.week) / 3.0,
                    np.log((self.week + 1.0) / (self.recent * WEEK_DAYS / RECENT_DAYS + 1.0)),
                    np.log(self.repeat_rate),
                ],
                axis=1,
            ).astype(np.float32)
        return self._features


class ItemTimeline:
    """Day-by-day item statistics of a set of orders: `at` gives `ItemStats` for any moment.

    Training examples each get the statistics of the moment their target order was placed, so
    "trending now" and "often re-bought" never include the future they are trained to predict.
    """

    def __init__(self, orders: dict[str, list[Order]], index: dict[str, int]) -> None:
        n_items = len(index) + 1
        self.first_day = int(min(t for seq in orders.values() for t, _ in seq) // _DAY)
        days = int(max(t for seq in orders.values() for t, _ in seq) // _DAY) - self.first_day + 1
        self.last_day = self.first_day + days - 1
        holding = np.zeros((days + 1, n_items), np.float32)  # row d + 1: orders on day d
        trials = np.zeros_like(holding)  # orders by customers who had bought the item before
        repeats = np.zeros_like(holding)  # ... that hold it again
        for seq in orders.values():
            seen = np.zeros(n_items, bool)
            for t, products in seq:
                row = int(t // _DAY) - self.first_day + 1
                ids = np.array([index[p] for p in products if p in index], dtype=np.int64)
                holding[row, ids] += 1
                trials[row, seen] += 1
                repeats[row, ids[seen[ids]]] += 1
                seen[ids] = True
        self._cum = [np.cumsum(a, axis=0) for a in (holding, trials, repeats)]
        self._cache: dict[int, ItemStats] = {}

    def at(self, now: float) -> ItemStats:
        """Statistics from the orders of the days before ``now``'s day (clamped to the data)."""
        day = min(max(int(now // _DAY) - self.first_day, 0), self.last_day - self.first_day + 1)
        if day not in self._cache:
            holding, trials, repeats = self._cum

            def window(days: int) -> np.ndarray:
                return holding[day] - holding[max(day - days, 0)]

            prior = repeats[day].sum() / max(trials[day].sum(), 1.0)
            rate = (repeats[day] + SMOOTHING * prior) / (trials[day] + SMOOTHING)
            rate[0] = max(prior, 1e-6)
            self._cache[day] = ItemStats(
                holding[day].copy(), window(RECENT_DAYS), window(WEEK_DAYS), np.maximum(rate, 1e-6)
            )
        return self._cache[day]

    def final(self) -> ItemStats:
        """The statistics right after the last day: what serving sees, at any later time."""
        return self.at((self.last_day + 1) * _DAY)


@dataclass
class Vocab:
    """The catalogue the model scores: products seen in training, most popular first.

    Index 0 is reserved for padding. ``popularity``, ``recent``, ``week`` and ``repeat_rate`` are
    the `ItemStats` at the end of the training orders (see `ItemTimeline.final`).
    """

    items: list[str]
    popularity: list[int]
    recent: list[int]
    repeat_rate: list[float]
    week: list[int] | None = None  # None: all zero
    index: dict[str, int] = field(init=False, repr=False, compare=False)
    stats: ItemStats = field(init=False, repr=False, compare=False)
    _clean: dict[str | None, dict[str, int]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.index = {item: i for i, item in enumerate(self.items)}
        self._clean = {}
        week = self.week if self.week is not None else [0] * len(self.items)
        self.stats = ItemStats(
            *(np.asarray(a, np.float32) for a in (self.popularity, self.recent, week)),
            np.asarray(self.repeat_rate, np.float32),
        )

    def __len__(self) -> int:
        return len(self.items)

    def get(self, product_id: str) -> int | None:
        return self.index.get(normalize_product(product_id))

    def clean_index(self, product_pattern: str | None = None) -> dict[str, int]:
        """The items an order can hold as they are: ids that are normalised products by the
        rule of ``product_pattern`` (`streams.state.products.product_rule`), not the padding."""
        if product_pattern not in self._clean:
            self._clean[product_pattern] = {
                item: i
                for i, item in enumerate(self.items)
                if i and normalize_product(item) == item and is_product(item, product_pattern)
            }
        return self._clean[product_pattern]

    def timeline(self, orders: dict[str, list[Order]]) -> ItemTimeline:
        return ItemTimeline(orders, {p: i for i, p in enumerate(self.items) if i})

    @classmethod
    def build(cls, orders: dict[str, list[Order]]) -> Vocab:
        counts: dict[str, int] = {}
        for seq in orders.values():
            for _, products in seq:
                for p in set(products):
                    counts[p] = counts.get(p, 0) + 1
        ranked = sorted(counts, key=lambda p: (-counts[p], p))
        end = ItemTimeline(orders, {p: i for i, p in enumerate(ranked, 1)}).final()
        return cls(
            ["<pad>", *ranked],
            [0, *(counts[p] for p in ranked)],
            [int(x) for x in end.recent],
            [float(x) for x in end.repeat_rate],
            [int(x) for x in end.week],
        )


@dataclass
class EncoderConfig:
    max_orders: int = 50  # the worker keeps the last 50 orders per customer
    product_pattern: str | None = None  # the merchant's product rule; None: UCI stock codes


ORDER_FEATURES = 4
REPEAT_FEATURES = 16


@dataclass
class EncodedHistory:
    """Model input for one customer. Empty (``n_orders == 0``) means cold start.

    order_items / order_lengths: known item ids per order, flattened (orders with no known item
    are left out); order_feats: (n_orders, ORDER_FEATURES); repeat_items: distinct known items;
    repeat_feats: (len(repeat_items), REPEAT_FEATURES); catalogue: (n_items, CATALOGUE_FEATURES),
    the `ItemStats.features` of the scoring moment (shared, not copied, between histories).
    """

    order_items: np.ndarray
    order_lengths: np.ndarray
    order_feats: np.ndarray
    repeat_items: np.ndarray
    repeat_feats: np.ndarray
    catalogue: np.ndarray

    @property
    def n_orders(self) -> int:
        return len(self.order_lengths)


def encode_history(
    orders: list[Order],
    vocab: Vocab,
    config: EncoderConfig,
    now: float | None = None,
    stats: ItemStats | None = None,
) -> EncodedHistory:
    """Encode a customer's time-ordered orders (the worker's state shape) for the model.

    ``now`` is the scoring time in epoch seconds: the cart event's time when serving, the
    cutoff in evaluation, the target order's time in training. ``None`` (or a time before the
    last order) means the time of the last order. ``stats`` are the catalogue statistics of
    that moment; serving leaves them to the vocabulary's (the end of the training data).

    Only the last ``config.max_orders`` orders count; unknown products are ignored. Per order:
    log days since the previous order, log days before now, log basket size, share of the
    order's products the vocabulary knows. Per distinct item: how often and how recently
    (orders; days before now) the customer bought it, its buying interval and how overdue it
    is, the days since the customer's last order, and the item's catalogue statistics:
    the repeat-purchase features the baselines live on, and more.
    """
    stats = stats if stats is not None else vocab.stats
    rule = config.product_pattern
    orders = [(seconds, order_products(products, rule)) for seconds, products in orders]
    orders = orders[len(orders) - orders_to_keep([len(products) for _, products in orders]) :]
    kept = []
    for seconds, products in orders[-config.max_orders :]:
        ids = [vocab.get(p) for p in products]
        known = list(dict.fromkeys(i for i in ids if i is not None))
        if known:
            kept.append((float(seconds), known, len(known) / max(len(products), 1)))
    if not kept:
        empty_i = np.zeros(0, dtype=np.int64)
        return EncodedHistory(
            empty_i,
            empty_i,
            np.zeros((0, ORDER_FEATURES), np.float32),
            empty_i,
            np.zeros((0, REPEAT_FEATURES), np.float32),
            stats.features(),
        )

    last_t = kept[-1][0]
    now = last_t if now is None else max(float(now), last_t)
    n = len(kept)
    order_feats = np.zeros((n, ORDER_FEATURES), np.float32)
    seen_at: dict[int, list[int]] = {}
    for j, (t, ids, known_share) in enumerate(kept):
        gap = (t - kept[j - 1][0]) / _DAY if j else 0.0
        order_feats[j] = (
            math.log1p(max(gap, 0.0)),
            math.log1p((now - t) / _DAY),
            math.log1p(len(ids)),
            known_share,
        )
        for i in ids:
            seen_at.setdefault(i, []).append(j)

    items = np.fromiter(seen_at, dtype=np.int64, count=len(seen_at))
    repeat_feats = np.zeros((len(items), REPEAT_FEATURES), np.float32)
    log_n = math.log1p(n)
    idle = math.log1p((now - last_t) / _DAY)
    catalogue = stats.features()
    for r, i in enumerate(items.tolist()):
        js = seen_at[i]
        count = len(js)
        last_j = js[-1]
        days_since = (now - kept[last_j][0]) / _DAY
        days_first = (now - kept[js[0]][0]) / _DAY
        interval = (kept[last_j][0] - kept[js[0]][0]) / _DAY / (count - 1) if count > 1 else 0.0
        repeat_feats[r, :11] = (
            math.log1p(count),
            count / n,
            float(last_j == n - 1),
            math.log1p(n - 1 - last_j),
            math.log1p(days_since),
            math.log1p(days_first),
            math.log1p(interval),
            float(count > 1) * min(max((days_since - interval) / (interval + 7.0), -3.0), 3.0),
            log_n,
            idle,
            count / (n - js[0]),  # share of the orders since the customer first bought it
        )
        repeat_feats[r, 11:] = catalogue[i]
    flat = np.fromiter((i for _, ids, _ in kept for i in ids), dtype=np.int64)
    lengths = np.array([len(ids) for _, ids, _ in kept], dtype=np.int64)
    return EncodedHistory(flat, lengths, order_feats, items, repeat_feats, catalogue)


_LOG1P_COUNTS = np.array([math.log1p(i) for i in range(MAX_ORDER_PRODUCTS + 1)])
"""``math.log1p`` of 0 ... 250, exactly as `encode_history` computes it for counts."""


@dataclass
class EncodedBatch:
    """`encode_history` of many customers at once, concatenated (what `encode_batch` returns).

    Rows with ``n_orders == 0`` are cold starts. Per kept order, over all rows in turn:
    ``order_lengths``, ``order_feats``, and the flat ``order_items``; per repeat candidate:
    ``repeat_row`` (the row it belongs to), ``repeat_items`` and ``repeat_feats``. All rows are
    scored at the catalogue statistics ``catalogue``.
    """

    n_orders: np.ndarray
    order_items: np.ndarray
    order_lengths: np.ndarray
    order_feats: np.ndarray
    repeat_row: np.ndarray
    repeat_items: np.ndarray
    repeat_feats: np.ndarray
    catalogue: np.ndarray

    def history(self, row: int) -> EncodedHistory:
        """Row ``row`` as `encode_history` returns it."""
        orders = np.concatenate([[0], np.cumsum(self.n_orders)])
        first, last = orders[row], orders[row + 1]
        items = np.concatenate([[0], np.cumsum(self.order_lengths)])
        repeat = self.repeat_row == row
        return EncodedHistory(
            self.order_items[items[first] : items[last]],
            self.order_lengths[first:last],
            self.order_feats[first:last],
            self.repeat_items[repeat],
            self.repeat_feats[repeat],
            self.catalogue,
        )


def _known_orders(
    orders: list[Order], clean_index: dict[str, int], config: EncoderConfig
) -> tuple[list[float], list[list[int]], list[float]]:
    """`encode_history`'s kept orders of one history: times, known ids and known shares.

    An order that holds only distinct ids of ``clean_index`` (`Vocab.clean_index`: always the
    case for the worker's state on the model's own catalogue) is read as it is; any other goes
    through `order_products` first, exactly as `encode_history` does with every order.
    """
    get = clean_index.get
    cleaned = []
    for seconds, products in orders:
        known = list(map(get, products))
        distinct = set(known)
        if None in distinct or len(distinct) != len(known) or len(known) > MAX_ORDER_PRODUCTS:
            products = order_products(products, config.product_pattern)
            known = [i for i in map(get, products) if i is not None]  # distinct, as products
        cleaned.append((seconds, products, known))
    cleaned = cleaned[len(cleaned) - orders_to_keep([len(p) for _, p, _ in cleaned]) :]
    times, ids, shares = [], [], []
    for seconds, products, known in cleaned[-config.max_orders :]:
        if known:
            times.append(float(seconds))
            ids.append(known)
            shares.append(len(known) / max(len(products), 1))
    return times, ids, shares


BATCH_LOOKUP = 32
"""`encode_batch` looks the ids of this many histories or more up all at once."""


@dataclass
class _KeptOrders:
    """`_known_orders` of many histories, flat: per kept order, all rows in turn."""

    n_orders: np.ndarray  # per history
    seconds: np.ndarray
    lengths: np.ndarray
    shares: np.ndarray
    items: np.ndarray  # the known ids of every kept order, one order after the other


def _known_orders_batch(
    histories: Sequence[list[Order]], clean_index: dict[str, int], config: EncoderConfig
) -> _KeptOrders:
    """`_known_orders` of every history, its per-order work done for the whole batch.

    Every product id is looked up once, as it is; a history whose orders all hold distinct
    ids of ``clean_index`` only, at most ``MAX_ORDER_PRODUCTS`` of them (the worker's state),
    keeps its orders by `orders_to_keep` and ``config.max_orders`` with numpy, every id
    known. Any other history goes through `_known_orders`, and so do all of a batch of fewer
    than `BATCH_LOOKUP` histories (numpy's per-call cost is more than the loop's there).
    """
    if len(histories) < BATCH_LOOKUP:
        return _known_orders_each(histories, clean_index, config)
    orders = [order for history in histories for order in history]
    per_history = np.fromiter(map(len, histories), np.int64, len(histories))
    sizes = np.fromiter((len(products) for _, products in orders), np.int64, len(orders))
    products = chain.from_iterable(products for _, products in orders)
    ids = np.fromiter(map(clean_index.get, products, repeat(0)), np.int64, int(sizes.sum()))
    seconds = np.fromiter((float(t) for t, _ in orders), np.float64, len(orders))
    history_of = np.repeat(np.arange(len(histories)), per_history)
    order_of = np.repeat(np.arange(len(orders)), sizes)
    bad = sizes > MAX_ORDER_PRODUCTS
    bad[order_of[ids == 0]] = True  # 0: not in clean_index (the padding item never is)
    span = max(clean_index.values(), default=0) + 1
    pairs = np.sort(order_of * span + ids)
    bad[pairs[1:][pairs[1:] == pairs[:-1]] // span] = True  # an id twice in one order
    slow = np.zeros(len(histories), bool)
    slow[history_of[bad]] = True

    end = np.cumsum(per_history)[history_of]  # one past the history's last order
    rank = end - 1 - np.arange(len(orders))  # 0: the history's last order
    total = np.cumsum(sizes)
    products_from = total[end - 1] - total + sizes  # ids in this order and the later ones
    keep = (rank < min(MAX_ORDERS, config.max_orders)) & (sizes > 0) & ~slow[history_of]
    keep &= (rank == 0) | (products_from <= MAX_HISTORY_PRODUCTS)
    kept = _KeptOrders(
        np.bincount(history_of[keep], minlength=len(histories)),
        seconds[keep],
        sizes[keep],
        np.ones(int(keep.sum())),
        ids[keep[order_of]],
    )
    if slow.any():
        kept = _with_slow_histories(kept, histories, np.flatnonzero(slow), clean_index, config)
    return kept


def _known_orders_each(
    histories: Sequence[list[Order]], clean_index: dict[str, int], config: EncoderConfig
) -> _KeptOrders:
    """`_known_orders` of each history in turn."""
    n_orders, seconds, lengths, shares, items = [], [], [], [], []
    for history in histories:
        t, ids, share = _known_orders(history, clean_index, config)
        n_orders.append(len(t))
        seconds += t
        lengths += map(len, ids)
        shares += share
        items += chain.from_iterable(ids)
    return _KeptOrders(
        np.array(n_orders, np.int64),
        np.array(seconds, np.float64),
        np.array(lengths, np.int64),
        np.array(shares, np.float64),
        np.array(items, np.int64),
    )


def _with_slow_histories(
    kept: _KeptOrders,
    histories: Sequence[list[Order]],
    slow: np.ndarray,
    clean_index: dict[str, int],
    config: EncoderConfig,
) -> _KeptOrders:
    """``kept`` with the histories ``slow`` (none of their orders are in it) from
    `_known_orders`, each in its place."""
    more = _known_orders_each([histories[row] for row in slow.tolist()], clean_index, config)
    n_orders = kept.n_orders.copy()
    n_orders[slow] = more.n_orders
    history = np.concatenate(
        [np.repeat(np.arange(len(n_orders)), kept.n_orders), np.repeat(slow, more.n_orders)]
    )
    order = np.argsort(history, kind="stable")  # by history, each one's orders in turn
    lengths = np.concatenate([kept.lengths, more.lengths])
    start = np.cumsum(lengths) - lengths
    item_at = np.repeat(start[order] - (np.cumsum(lengths[order]) - lengths[order]), lengths[order])
    return _KeptOrders(
        n_orders,
        np.concatenate([kept.seconds, more.seconds])[order],
        lengths[order],
        np.concatenate([kept.shares, more.shares])[order],
        np.concatenate([kept.items, more.items])[item_at + np.arange(len(item_at))],
    )


def _by_row_and_item(rows: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    """The stable sort order of (row, item) pairs; two radix sorts when both fit 16 bits."""
    if n_items <= 1 << 16 and len(rows) and rows[-1] < 1 << 16:
        by_item = np.argsort(items.astype(np.uint16), kind="stable")
        return by_item[np.argsort(rows[by_item].astype(np.uint16), kind="stable")]
    return np.argsort(rows * n_items + items, kind="stable")


def _log1p(values: np.ndarray) -> np.ndarray:
    """``math.log1p`` of each value (float64), as `encode_history` computes it."""
    return np.fromiter(map(math.log1p, values.tolist()), np.float64, len(values))


def _order_of_distinct(positions: np.ndarray, size: int) -> np.ndarray:
    """``np.argsort(positions, kind="stable")`` of distinct ``positions`` below ``size``: the
    order that sorts them, found by scattering them on a mask of ``size`` (no sort)."""
    rank = np.empty(size, np.int64)
    rank[positions] = np.arange(len(positions))
    seen = np.zeros(size, bool)
    seen[positions] = True
    return rank[seen]


def encode_batch(
    histories: Sequence[list[Order]],
    vocab: Vocab,
    config: EncoderConfig,
    now: Sequence[float | None] | None = None,
) -> EncodedBatch:
    """``[encode_history(h, vocab, config, now=t) for h, t in zip(histories, now)]``, bit for
    bit (tested), as one `EncodedBatch`, at the vocabulary's catalogue statistics (serving's).

    The serving fast path: product ids that are already normalised products of the vocabulary
    (the worker's state) are not normalised again, and the per-order and per-item features are
    computed for the whole batch with numpy instead of item by item. The logarithms are still
    ``math.log1p``'s (numpy's SIMD one can differ in the last bit): per order, where every
    per-item time feature comes from, and per repeat interval.
    """
    catalogue = vocab.stats.features()
    return _encode_flat(histories, vocab, config, now, catalogue, lambda _, items: catalogue[items])


def _encode_flat(
    histories: Sequence[list[Order]],
    vocab: Vocab,
    config: EncoderConfig,
    now: Sequence[float | None] | None,
    catalogue: np.ndarray,
    catalogue_rows: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> EncodedBatch:
    """`encode_batch`'s work; ``catalogue_rows(rows, items)`` gives the catalogue features of
    each repeat candidate (its history's row, its item), ``catalogue`` is the batch's."""
    times = list(now) if now is not None else [None] * len(histories)
    kept = _known_orders_batch(histories, vocab.clean_index(config.product_pattern), config)
    n_orders = kept.n_orders
    if not len(kept.items):
        empty_i = np.zeros(0, np.int64)
        return EncodedBatch(
            n_orders,
            empty_i,
            empty_i,
            np.zeros((0, ORDER_FEATURES), np.float32),
            empty_i,
            empty_i,
            np.zeros((0, REPEAT_FEATURES), np.float32),
            catalogue,
        )
    t, lengths, items = kept.seconds, kept.lengths, kept.items
    rows = np.repeat(np.arange(len(histories)), n_orders)
    starts = np.concatenate([[0], np.cumsum(n_orders)[:-1]])  # each row's first kept order
    j = np.arange(len(t)) - starts[rows]  # each order's place in its row
    n = n_orders[rows]
    last_t = t[(starts + n_orders - 1)[n_orders > 0]]  # each warm row's last kept order
    at_row = np.array(
        [
            last if time is None else max(float(time), last)
            for last, time in zip(
                last_t.tolist(), (times[r] for r in np.flatnonzero(n_orders)), strict=True
            )
        ]
    )
    at = np.repeat(at_row, n_orders[n_orders > 0])
    ago = (at - t) / _DAY
    log_ago = _log1p(ago)
    gap = np.maximum(np.diff(t, prepend=0.0) / _DAY, 0.0)
    gap[j == 0] = 0.0
    order_feats = np.stack(
        [
            _log1p(gap),
            log_ago,
            _LOG1P_COUNTS[lengths],
            kept.shares,
        ],
        axis=1,
    ).astype(np.float32)

    # repeat candidates: one per (row, item), in order of first appearance within the row
    occ_order = np.repeat(np.arange(len(t)), lengths)
    occ_row = rows[occ_order]
    perm = _by_row_and_item(occ_row, items, len(vocab.items))
    key = occ_row[perm] * len(vocab.items) + items[perm]
    bounds = np.flatnonzero(np.diff(key)) + 1
    group_start = np.concatenate([[0], bounds])
    group_end = np.concatenate([bounds, [len(key)]])
    first = perm[group_start]
    by_appearance = _order_of_distinct(first, len(key))
    first, last = first[by_appearance], perm[group_end - 1][by_appearance]
    count = (group_end - group_start)[by_appearance]
    first_o, last_o = occ_order[first], occ_order[last]  # global order index
    n_r = n[first_o]
    first_j, last_j = j[first_o], j[last_o]
    repeat_items = items[first]
    days_since = ago[last_o]
    interval = np.where(count > 1, (t[last_o] - t[first_o]) / _DAY / np.maximum(count - 1, 1), 0.0)
    log_interval = np.zeros(len(count))
    again = np.flatnonzero(count > 1)
    log_interval[again] = _log1p(interval[again])
    overdue = np.clip((days_since - interval) / (interval + 7.0), -3.0, 3.0)
    repeat_row = rows[first_o]
    last_of_row = (starts + n_orders - 1)[repeat_row]
    repeat_feats = np.empty((len(count), REPEAT_FEATURES), np.float32)
    repeat_feats[:, :11] = np.array(
        [
            _LOG1P_COUNTS[count],
            count / n_r,
            (last_j == n_r - 1).astype(np.float64),
            _LOG1P_COUNTS[n_r - 1 - last_j],
            log_ago[last_o],
            log_ago[first_o],
            log_interval,
            (count > 1) * overdue,
            _LOG1P_COUNTS[n_r],
            log_ago[last_of_row],
            count / (n_r - first_j),
        ]
    ).T
    repeat_feats[:, 11:] = catalogue_rows(repeat_row, repeat_items)
    return EncodedBatch(
        n_orders,
        items,
        lengths,
        order_feats,
        repeat_row,
        repeat_items,
        repeat_feats,
        catalogue,
    )


EXAMPLE_CHUNK = 4096
"""`encode_examples` encodes this many prefixes at a time (memory; `_by_row_and_item`'s 16 bits)."""


def encode_examples(
    histories: Sequence[list[Order]],
    vocab: Vocab,
    config: EncoderConfig,
    now: Sequence[float | None],
    stats: Sequence[ItemStats],
) -> list[EncodedHistory]:
    """``[encode_history(h, vocab, config, now=t, stats=s) for h, t, s in ...]``, bit for bit
    (tested), computed the way `encode_batch` is: what makes building an epoch's examples
    cheap. Histories scored at the same moment share that moment's catalogue features."""
    out: list[EncodedHistory] = []
    for start in range(0, len(histories), EXAMPLE_CHUNK):
        chunk = slice(start, start + EXAMPLE_CHUNK)
        moments = {id(s): s.features() for s in stats[chunk]}
        place = {key: at for at, key in enumerate(moments)}
        features = list(moments.values())
        moment = np.array([place[id(s)] for s in stats[chunk]], np.int64)
        table = np.stack(features)  # (moments, n_items, CATALOGUE_FEATURES)
        at_moment = partial(_catalogue_at, table, moment)
        encoded = _encode_flat(histories[chunk], vocab, config, now[chunk], features[0], at_moment)
        out += _split_rows(encoded, [features[m] for m in moment.tolist()])
    return out


def _catalogue_at(
    table: np.ndarray, moment: np.ndarray, rows: np.ndarray, items: np.ndarray
) -> np.ndarray:
    """The catalogue features of ``items`` at the moment of their ``rows``."""
    return table[moment[rows], items]


def _split_rows(encoded: EncodedBatch, catalogues: list[np.ndarray]) -> list[EncodedHistory]:
    """Every row of ``encoded`` as an `EncodedHistory` (views), with its own catalogue."""
    order_end = np.cumsum(encoded.n_orders)
    order_start = order_end - encoded.n_orders
    item_at = np.concatenate([[0], np.cumsum(encoded.order_lengths)])
    repeat_end = np.cumsum(np.bincount(encoded.repeat_row, minlength=len(catalogues)))
    repeat_start = np.concatenate([[0], repeat_end[:-1]])
    return [
        EncodedHistory(
            encoded.order_items[item_at[a] : item_at[b]],
            encoded.order_lengths[a:b],
            encoded.order_feats[a:b],
            encoded.repeat_items[c:d],
            encoded.repeat_feats[c:d],
            catalogue,
        )
        for a, b, c, d, catalogue in zip(
            order_start.tolist(),
            order_end.tolist(),
            repeat_start.tolist(),
            repeat_end.tolist(),
            catalogues,
            strict=True,
        )
    ]
