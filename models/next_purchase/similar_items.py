"""Item-to-item "bought together" neighbours: what shops show as add-ons and "customers who
bought X also bought Y". Pure numpy/scipy; trained by ``nextbest train`` next to the LSTM.

Model. Two products co-occur when one order holds both (the unit is the basket, not the
customer: an add-on is bought *with* the cart, and on Online Retail basket co-occurrence ranks
a customer's next products better than customer co-occurrence; docs/next-purchase-model.md).
The similarity of products i and j is the cosine of their order vectors, shrunk towards 0 for
pairs seen together in few orders::

    sim(i, j) = c_ij / sqrt(n_i * n_j) * c_ij / (c_ij + shrinkage)

with ``c_ij`` the orders holding both, ``n_i`` the orders holding i. Pairs seen together in
fewer than ``min_support`` orders are dropped: two products bought once, together, would
otherwise have a cosine of 1 and outrank every real pair. Each product keeps its top
``neighbours`` (bounded memory: products x neighbours entries), ties broken by popularity, then
product id, so a fit is deterministic.

Cold start. An unknown product (new since training), or one with no neighbour above the
minimum support, gets the most popular products instead, flagged ``cold_start``. The UCI data
has no product categories, so there is no category fallback (stock-code stems, the proxy at
hand, did not beat popularity: docs/next-purchase-model.md).

Artifact: ``similar_items.npz`` (the arrays) and ``similar_items.json`` (products, config,
format) in the model's version directory (`save`, `load`; `artifact.save` writes them before it
moves the ``latest`` pointer, so the worker loads both or neither).
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Collection
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import sparse

from models.next_purchase.encoding import Order
from streams.decisions import BOUGHT_TOGETHER
from streams.state.products import normalize_product

FORMAT = 1
ARRAYS = "similar_items.npz"
META = "similar_items.json"
POPULAR = "popular"  # a neighbour list's popularity fill
#: The pair similarity from which a neighbour of the cart's products goes before the
#: next-purchase model's picks on an offer's add-ons (``NEXTBEST_ADD_ON_MIN_SIMILARITY``): on
#: Online Retail, a bought-together pick below about 0.1 is bought with the cart no more often
#: than the model's 5th pick, and add-on Hit@5 peaks at 0.15 (docs/next-purchase-model.md).
STRONG_SIMILARITY = 0.15


@dataclass(frozen=True)
class SimilarityConfig:
    neighbours: int = 50  # kept per product
    min_support: int = 3  # orders a pair must share
    shrinkage: float = 20.0  # sim * c / (c + shrinkage): pairs seen in few orders count less

    def __post_init__(self) -> None:
        if self.neighbours < 1 or self.min_support < 1 or self.shrinkage < 0:
            raise ValueError(f"bad similarity config {self}")


@dataclass(frozen=True)
class Neighbour:
    product_id: str
    score: float  # the similarity (bought together), 0.0 for a popularity fill
    together: int  # orders holding both (0 for a popularity fill)
    source: str  # BOUGHT_TOGETHER or POPULAR


@dataclass(frozen=True)
class SimilarResult:
    items: list[Neighbour]
    known_product: bool  # the product was in the training orders
    cold_start: bool  # no bought-together neighbour: the list is popularity


class SimilarItems:
    """Top-N neighbours per product; ``items`` most popular first (index = popularity rank)."""

    def __init__(
        self,
        items: list[str],
        popularity: np.ndarray,
        neighbours: np.ndarray,
        scores: np.ndarray,
        together: np.ndarray,
        config: SimilarityConfig,
    ) -> None:
        self.items = items
        self.index = {item: i for i, item in enumerate(items)}
        self.popularity = np.asarray(popularity, np.int64)  # orders holding the product
        self.neighbours = np.asarray(neighbours, np.int32)  # (products, N), -1: none
        self.scores = np.asarray(scores, np.float32)  # (products, N), 0 where none
        self.together = np.asarray(together, np.int32)  # (products, N)
        self.config = config
        self._strong: dict[float, dict[int, tuple[tuple[int, float], ...]]] = {}

    def __len__(self) -> int:
        return len(self.items)

    # -- training ---------------------------------------------------------------------------

    @classmethod
    def fit(
        cls, orders: dict[str, list[Order]], config: SimilarityConfig | None = None
    ) -> SimilarItems:
        """Neighbours from every order of ``orders`` (the training loader's shape)."""
        config = config or SimilarityConfig()
        baskets = [products for seq in orders.values() for _, products in seq if products]
        counts: dict[str, int] = {}
        for products in baskets:
            for p in set(products):
                counts[p] = counts.get(p, 0) + 1
        items = sorted(counts, key=lambda p: (-counts[p], p))
        index = {p: i for i, p in enumerate(items)}
        rows = np.repeat(np.arange(len(baskets)), [len(set(b)) for b in baskets])
        cols = np.fromiter((index[p] for b in baskets for p in set(b)), np.int64, len(rows))
        onehot = sparse.csr_matrix(
            (np.ones(len(rows), np.float64), (rows, cols)), shape=(len(baskets), len(items))
        )
        co = (onehot.T @ onehot).tocsr()
        co.setdiag(0)
        co.eliminate_zeros()
        popularity = np.array([counts[p] for p in items], np.int64)
        n = len(items)
        width = config.neighbours
        neighbours = np.full((n, width), -1, np.int32)
        scores = np.zeros((n, width), np.float32)
        together = np.zeros((n, width), np.int32)
        for i in range(n):
            start, end = co.indptr[i], co.indptr[i + 1]
            cols_i, c = co.indices[start:end], co.data[start:end]
            keep = c >= config.min_support
            cols_i, c = cols_i[keep], c[keep]
            if not len(c):
                continue
            sim = c / np.sqrt(popularity[i] * popularity[cols_i]) * c / (c + config.shrinkage)
            sim = sim.astype(np.float32)
            order = np.lexsort((cols_i, -sim))[:width]  # best first; ties: the more popular
            k = len(order)
            neighbours[i, :k] = cols_i[order]
            scores[i, :k] = sim[order]
            together[i, :k] = c[order]
        return cls(items, popularity, neighbours, scores, together, config)

    # -- serving ----------------------------------------------------------------------------

    def similar(self, product_id: str, n: int = 10, exclude: Collection[str] = ()) -> SimilarResult:
        """The ``n`` products most bought together with ``product_id`` (not in ``exclude``),
        then the most popular ones to fill up to ``n``."""
        product = normalize_product(product_id)
        row = self.index.get(product)
        picks: list[Neighbour] = []
        skip = {product, *exclude}
        if row is not None:
            for j, s, c in zip(
                self.neighbours[row], self.scores[row], self.together[row], strict=True
            ):
                if j < 0 or len(picks) == n:
                    break
                item = self.items[j]
                if item not in skip:
                    picks.append(Neighbour(item, round(float(s), 6), int(c), BOUGHT_TOGETHER))
        cold = not picks
        return SimilarResult(self._fill(picks, n, skip), row is not None, cold)

    def _fill(self, picks: list[Neighbour], n: int, skip: Collection[str]) -> list[Neighbour]:
        taken = {p.product_id for p in picks} | set(skip)
        for item in self.items:
            if len(picks) >= n:
                break
            if item not in taken:
                picks.append(Neighbour(item, 0.0, 0, POPULAR))
        return picks

    def bought_with(
        self, products: Collection[str], n: int, min_score: float, exclude: Collection[str] = ()
    ) -> list[str]:
        """Up to ``n`` products bought together with the basket ``products`` (normalised ids,
        as the loader and the worker's state keep them): those with a pair similarity of at
        least ``min_score`` to one of them, by summed similarity over those pairs (ties: the
        more popular), none of ``products`` or ``exclude``.

        Runs per cart change in the worker: plain Python over each product's strong pairs
        (`_strong_pairs`), which measured about twice as fast as numpy (per-call overheads) on carts
        of a few to a few dozen products; the sums are added in the same order as before, so
        the ranking is the same to the last bit."""
        summed: dict[int, float] = {}
        add = summed.get
        index = self.index
        for product in products:
            row = index.get(product)
            if row is not None:
                for j, score in self._strong_pairs(row, min_score):
                    summed[j] = add(j, 0.0) + score
        for product in (*products, *exclude):
            summed.pop(index.get(product, -1), None)
        best = heapq.nsmallest(n, summed.items(), key=lambda pair: (-pair[1], pair[0]))
        return [self.items[j] for j, _ in best]

    def _strong_pairs(self, row: int, min_score: float) -> tuple[tuple[int, float], ...]:
        """Product ``row``'s neighbours with a similarity of at least ``min_score``, best first,
        as (neighbour row, score) pairs; computed once per row and threshold."""
        strong = self._strong.setdefault(min_score, {})
        pairs = strong.get(row)
        if pairs is None:
            neighbours, scores = self.neighbours[row], self.scores[row]
            keep = (scores >= min_score) & (neighbours >= 0)
            pairs = tuple(zip(neighbours[keep].tolist(), scores[keep].tolist(), strict=True))
            strong[row] = pairs
        return pairs

    def check(self) -> None:
        """Raise unless the table is usable (the worker checks a version before serving it)."""
        n, width = self.neighbours.shape
        if n != len(self.items) or self.scores.shape != (n, width) or not n:
            raise ValueError(f"similar items: {n} rows for {len(self.items)} products")
        if self.neighbours.max(initial=-1) >= n or not np.isfinite(self.scores).all():
            raise ValueError("similar items: neighbour out of range or a non-finite score")

    # -- artifact ---------------------------------------------------------------------------

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        np.savez_compressed(
            directory / ARRAYS,
            popularity=self.popularity,
            neighbours=self.neighbours,
            scores=self.scores,
            together=self.together,
        )
        meta = {"format": FORMAT, "items": self.items, "config": asdict(self.config)}
        (directory / META).write_text(json.dumps(meta))


def present(directory: str | Path) -> bool:
    return (Path(directory) / META).is_file()


def load(directory: str | Path) -> SimilarItems:
    directory = Path(directory)
    meta = json.loads((directory / META).read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{directory}: similar items format {meta.get('format')}, reads {FORMAT}")
    with np.load(directory / ARRAYS, allow_pickle=False) as arrays:
        return SimilarItems(
            meta["items"],
            arrays["popularity"],
            arrays["neighbours"],
            arrays["scores"],
            arrays["together"],
            SimilarityConfig(**meta["config"]),
        )


def load_optional(directory: str | Path) -> SimilarItems | None:
    """The version's table, or None for a version trained before there was one."""
    return load(directory) if present(directory) else None
