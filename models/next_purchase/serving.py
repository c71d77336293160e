"""Serving the next-purchase model: per-cart signals, a policy that puts them on offers.

- `order_history` turns a customer's state into the model's input shape, with the training
  loader's product rule (`streams.state.products.is_product`), so serving sees what
  training saw;
  a decision scores the orders applied before its cart event (`DecisionContext.view`) and
  placed up to its time, not an order later in the same micro-batch. `served_history` gives the
  scorer the same model input without normalising the state's ids again (the encoder
  checks them against the catalogue instead).
- `ModelStore` holds the loaded artifact and hot-reloads it: a thread watches the artifact
  root's ``latest`` pointer, loads a new version (the LSTM and the item-to-item table beside
  it) off the event loop, checks it, builds its LSTM kernels (`Recommender.warm_up`, with the
  serving thread's torch thread count) and swaps it in with one assignment. A version that
  fails to load is logged and counted; the previous model keeps serving. `MerchantModels`
  holds one store per merchant folder.
- `NextPurchaseScorer.signals` runs one batched inference per micro-batch over the customers'
  order histories and returns a `ModelSignals` per cart: the model's top-k products not in the
  cart, a product-coupon candidate and a purchase propensity, scored as of the cart event's
  time, and the cart's add-ons: the cart products' strong "bought together" neighbours
  (`models.next_purchase.similar_items`, pair similarity at least ``add_on_min_similarity``)
  first, then the model's picks, each marked with its source. A customer's ranking is reused
  for their later carts while their order history is unchanged, for up to `CACHE_TTL_S` of
  event time (a shopping session has many cart changes and one history; the model's time
  features are in days); the add-ons are looked up for every cart. Later policies (the
  promotion model) read these signals.
- `NextPurchasePolicy` wraps a base policy (the threshold rules) and attaches the signals to
  its offers. It never fails a batch: if the model is missing or fails, offers go out
  rules-only, counted as fallbacks. A `ModelOffer`'s `event_fields` are the signals' fields,
  which the pipeline writes onto its promotion event.
- `ServingObserver` is told what serving counts and times (loads, load errors, fallbacks,
  predictions, inference time); by default it does nothing, the worker passes one that updates
  its Prometheus metrics.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from functools import cached_property, partial
from pathlib import Path

import torch

from models.next_purchase import artifact, similar_items
from models.next_purchase.encoding import Order
from models.next_purchase.model import Recommender, Scored
from models.next_purchase.paths import merchant_model_root
from models.next_purchase.similar_items import STRONG_SIMILARITY, SimilarItems
from streams.decisions import BOUGHT_TOGETHER, NEXT_PURCHASE, DecisionContext, Offer, Policy
from streams.state.products import is_product, normalize_product

log = logging.getLogger(__name__)
CACHE_CUSTOMERS = 4096  # per-customer prediction cache (a few KB each)
CACHE_TTL_S = 900.0  # event time a customer's cached ranking serves their later carts
ERROR_LOG_INTERVAL_S = 60.0


class ServingObserver:
    """What serving reports as it loads models and scores carts. This one ignores it all."""

    def model_loaded(self, version: str, replaced: str | None) -> None:
        """A store swapped ``version`` in for ``replaced`` (None: the store's first model)."""

    def load_failed(self) -> None:
        """A version failed to load or check; the store keeps its model (or none)."""

    def fell_back(self, reason: str, decisions: int) -> None:
        """``decisions`` carts got no signals: ``unavailable`` (no model for their merchant)
        or ``error`` (inference failed)."""

    def predicted(self, source: str, count: int) -> None:
        """``count`` rankings attached, from ``source``: ``model`` (inferred, one per
        customer) or ``cache`` (a customer's earlier ranking)."""

    def inferred(self, wall_s: float, cpu_s: float) -> None:
        """One batched inference took ``wall_s`` seconds, ``cpu_s`` of its thread's CPU time."""


def order_history(
    state: dict, until: float | None = None, product_pattern: str | None = None
) -> list[Order]:
    """The customer's orders as ``[(epoch s, [product_id, ...]), ...]``, oldest first; only
    those placed at or before ``until`` (epoch s) when given.

    Same rule as the training loader: only product codes count (postage, fees and manual lines
    are dropped, ids normalized), and an order left with no product is no order.
    ``product_pattern``: the model's product rule (`Recommender.encoder`); None: UCI codes.
    """
    history = []
    for ts, _order_id, _total, products in state["orders"]:
        if until is not None and ts > until:
            continue
        kept = list(
            dict.fromkeys(normalize_product(p) for p in products if is_product(p, product_pattern))
        )
        if kept:
            history.append((float(ts), kept))
    return history


def served_history(
    state: dict,
    until: float | None = None,
    catalogue: Mapping[str, int] | None = None,
    product_pattern: str | None = None,
) -> list[Order]:
    """`order_history` for `models.next_purchase.encoding.encode_batch`: the same encoding
    (tested), cheaper.

    The state's product lists go as they are: the worker stored them normalised, with the
    product rule applied (`streams.state.customer_state.apply_order`), and `encode_batch` applies
    the rule again to any order that does not hold only products of the model's ``catalogue``
    (``vocab.clean_index(product_pattern)``). What is left to do here is `order_history`'s
    dropping of an order with no product at all (by the model's rule, ``product_pattern``),
    checked with the rule only for an order without a catalogue item.
    """
    known = (catalogue or {}).keys()
    return [
        (float(ts), products)
        for ts, _order_id, _total, products in state["orders"]
        if (until is None or ts <= until)
        and not (
            known.isdisjoint(products) and not any(is_product(p, product_pattern) for p in products)
        )
    ]


def cart_products(context: DecisionContext) -> set[str]:
    """Products to leave out of the recommendations: the cart's, and those of orders placed
    after the cart change, read from ``context.view`` (the state as the cart event left it; an
    order applied before it but placed after it, by event time, counts). A context without
    ``as_of`` (a stored cart) reads the state as it is now."""
    state = context.view
    products = {normalize_product(line[0]) for line in state["cart"]["lines"]}
    for ts, _order_id, _total, items in state["orders"]:
        if ts > context.ts:
            products.update(normalize_product(p) for p in items)
    return products


@dataclass(frozen=True)
class ModelSignals:
    """What the next-purchase model says about one cart."""

    model_version: str
    recommendations: tuple[str, ...]  # top-k predicted products not in the cart, best first
    probabilities: tuple[float, ...]  # P(the next pick is that product), per recommendation
    cold_start: bool  # no known product in the history: popularity ranking
    #: the cart products' strong neighbours not in the cart, best first (none without a table),
    #: or the lookup that finds them: run once, when an offer first needs its add-ons (most
    #: cart decisions make no offer, and the lookup is the costliest step of a cart's signals)
    neighbours: Sequence[str] | Callable[[], Sequence[str]] = field(default=(), compare=False)

    @cached_property
    def bought_together(self) -> tuple[str, ...]:
        neighbours = self.neighbours
        return tuple(neighbours() if callable(neighbours) else neighbours)

    @property
    def add_ons(self) -> tuple[str, ...]:
        """What the offer carries: the bought-together products, then the model's picks, as
        many as the longer of the two. The coupon and propensity stay the model's alone, so
        the promotion policy decides as it did before there were add-ons."""
        k = max(len(self.recommendations), len(self.bought_together))
        picks = (p for p in self.recommendations if p not in self.bought_together)
        return (*self.bought_together, *picks)[:k]

    @property
    def add_on_sources(self) -> tuple[str, ...]:
        """Where each of `add_ons` comes from: ``bought_together`` or ``next_purchase``."""
        shown = len(self.add_ons)
        together = min(len(self.bought_together), shown)
        return (BOUGHT_TOGETHER,) * together + (NEXT_PURCHASE,) * (shown - together)

    @property
    def coupon_product_id(self) -> str | None:
        """Product-coupon candidate: the most likely next product not already in the cart."""
        return self.recommendations[0] if self.recommendations else None

    @property
    def coupon_probability(self) -> float | None:
        return self.probabilities[0] if self.probabilities else None

    @property
    def purchase_propensity(self) -> float:
        """Probability that the customer's next pick is one of the recommended add-ons."""
        return sum(self.probabilities)

    def event_fields(self) -> dict:
        """The optional model fields of a PromotionEvent (``schemas/events.py``)."""
        return {
            "coupon_product_id": self.coupon_product_id,
            "coupon_probability": _rounded(self.coupon_probability),
            "purchase_propensity": _rounded(self.purchase_propensity),
            "model_version": self.model_version,
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


@dataclass(frozen=True)
class ModelOffer(Offer):
    """An offer with the next-purchase signals it was made with."""

    signals: ModelSignals | None = None

    def event_fields(self) -> dict:
        """The signals' fields on the offer's promotion event (none without signals)."""
        return self.signals.event_fields() if self.signals is not None else {}


def with_signals(offer: Offer, signals: ModelSignals) -> ModelOffer:
    base = {f.name: getattr(offer, f.name) for f in fields(Offer)}
    add_ons = {"recommendations": signals.add_ons, "recommendation_sources": signals.add_on_sources}
    return ModelOffer(**{**base, **add_ons}, signals=signals)


@dataclass(frozen=True)
class LoadedModel:
    version: str  # the artifact's version directory name
    path: Path
    recommender: Recommender
    similar: SimilarItems | None = None  # None: a version trained before the table existed


def check_recommender(recommender: Recommender) -> None:
    """Score a cold-start and a one-order history; raise unless the result is usable."""
    product = recommender.vocab.items[1]
    scored = recommender.score_batch([[], [(0.0, [product])]], k=5)
    for s in scored:
        if not s.items or not all(math.isfinite(p) and 0.0 <= p <= 1.0 for p in s.scores):
            raise ValueError(f"model returned unusable scores {s.scores[:5]}")


class ModelStore:
    """The serving model, loaded from an artifact root (or one version directory).

    ``current`` is replaced by one assignment, so a micro-batch uses either the old or the new
    model, never a mix. `refresh` runs at start-up and then every ``reload_s`` in a thread.
    """

    def __init__(
        self,
        path: str | Path,
        reload_s: float = 10.0,
        loader: Callable[[Path], Recommender] = artifact.load,
        observer: ServingObserver | None = None,
        similar_loader: Callable[[Path], SimilarItems | None] = similar_items.load_optional,
    ) -> None:
        self.path = Path(path)
        self.reload_s = reload_s
        self.loader = loader
        self.similar_loader = similar_loader
        self.observer = observer if observer is not None else ServingObserver()
        self.current: LoadedModel | None = None
        self._failed: str | None = None  # a version that failed: not retried until it changes
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> bool:
        """Load the version the artifact path names if it is new; True when one was swapped in."""
        with self._lock:
            try:
                target = artifact.resolve(self.path)
            except OSError as exc:
                target = self.path
                log.warning("cannot read the model pointer in %s: %s", self.path, exc)
            version = target.name
            if version == self._failed or (self.current and self.current.version == version):
                return False
            started = time.perf_counter()
            try:
                recommender = self.loader(target)
                check_recommender(recommender)
                similar = self.similar_loader(target)
                if similar is not None:
                    similar.check()
                recommender.warm_up()
            except Exception:
                self._failed = version
                self.observer.load_failed()
                kept = self.current.version if self.current else "none (rules only)"
                log.exception("next-purchase model %s failed to load; serving %s", target, kept)
                return False
            loaded = LoadedModel(version, target, recommender, similar)
            previous, self.current = self.current, loaded
            self._failed = None
            self.observer.model_loaded(version, previous.version if previous else None)
            log.warning(
                "next-purchase model %s loaded in %.2fs (%d products; %s)",
                version,
                time.perf_counter() - started,
                len(recommender.vocab) - 1,
                f"bought-together table of {len(similar)} products"
                if similar is not None
                else "no bought-together table: retrain for add-ons and /similar-items",
            )
            return True

    def for_merchant(self, merchant_id: str) -> LoadedModel | None:
        """The model for ``merchant_id``'s carts: this store serves every merchant."""
        return self.current

    def _watch(self, threads: int) -> None:
        torch.set_num_threads(threads)  # as the serving thread, for `Recommender.warm_up`
        while not self._stop.wait(self.reload_s):
            try:
                self.refresh()
            except Exception:  # the watcher must outlive any surprise
                log.exception("model reload check failed")

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._watch, args=(torch.get_num_threads(),), name="model-reload", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


class MerchantModels(ModelStore):
    """Each merchant's own model, ``<models_dir>/<merchant>/next_purchase`` once that folder
    holds one, else the shared default (``NEXTBEST_MODEL_PATH``, when set).

    `refresh` (at start, then every ``reload_s`` in a thread) reloads the default and every
    merchant folder, picking up folders that appeared since: a merchant's first model is
    served without a restart.
    """

    def __init__(
        self,
        default_path: str | Path | None,
        models_dir: str | Path,
        reload_s: float = 10.0,
        loader: Callable[[Path], Recommender] = artifact.load,
        observer: ServingObserver | None = None,
        similar_loader: Callable[[Path], SimilarItems | None] = similar_items.load_optional,
    ) -> None:
        super().__init__(default_path or "", reload_s, loader, observer, similar_loader)
        self.has_default = bool(default_path)
        self.models_dir = Path(models_dir)
        self.merchants: dict[str, ModelStore] = {}

    def refresh(self) -> bool:
        swapped = super().refresh() if self.has_default else False
        if self.models_dir.is_dir():
            for folder in sorted(self.models_dir.iterdir()):
                root = merchant_model_root(self.models_dir, folder.name)
                if folder.name not in self.merchants and root.is_dir():
                    self.merchants[folder.name] = ModelStore(
                        root, self.reload_s, self.loader, self.observer, self.similar_loader
                    )
        for store in self.merchants.values():
            swapped = store.refresh() or swapped
        return swapped

    def for_merchant(self, merchant_id: str) -> LoadedModel | None:
        own = self.merchants.get(merchant_id)
        if own is not None and own.current is not None:
            return own.current
        return self.current


@dataclass
class _Cached:
    version: str
    orders: tuple  # (ts, order_id) of every order in state: the history's identity
    ts: float  # the event time it was scored at
    scored: Scored


class NextPurchaseScorer:
    """Batched next-purchase signals for cart decisions, with a per-customer result cache."""

    def __init__(
        self,
        store: ModelStore,
        top_k: int = 5,
        observer: ServingObserver | None = None,
        add_on_min_similarity: float = STRONG_SIMILARITY,
    ) -> None:
        self.store = store  # a `ModelStore` (one model) or `MerchantModels` (one per merchant)
        self.top_k = top_k
        self.add_on_min_similarity = add_on_min_similarity
        self.observer = observer if observer is not None else ServingObserver()
        self._cache: OrderedDict[str, _Cached] = OrderedDict()
        self._last_error_log = 0.0

    def signals(self, contexts: Sequence[DecisionContext]) -> list[ModelSignals | None] | None:
        """One `ModelSignals` per context, scored by its merchant's model: None for a context
        whose merchant has no model or whose inference failed (logged, counted); None instead
        of the list when no context got any."""
        by_merchant: dict[str, list[int]] = {}
        for row, context in enumerate(contexts):
            by_merchant.setdefault(context.merchant.id, []).append(row)
        out: list[ModelSignals | None] = [None] * len(contexts)
        for merchant_id, rows in by_merchant.items():
            loaded = self.store.for_merchant(merchant_id)
            if loaded is None:
                self.observer.fell_back("unavailable", len(rows))
                continue
            try:
                scored = self._signals(loaded, [contexts[row] for row in rows])
            except Exception:
                self.observer.fell_back("error", len(rows))
                now = time.monotonic()
                if now - self._last_error_log > ERROR_LOG_INTERVAL_S:
                    self._last_error_log = now
                    log.exception("next-purchase inference failed; offers go out rules-only")
                continue
            for row, signals in zip(rows, scored, strict=True):
                out[row] = signals
        return out if any(s is not None for s in out) else None

    def _signals(
        self, loaded: LoadedModel, contexts: Sequence[DecisionContext]
    ) -> list[ModelSignals]:
        carts = [cart_products(c) for c in contexts]
        scored: list[Scored | None] = [None] * len(contexts)
        misses: dict[str, list[int]] = {}  # customer -> rows (one inference per customer)
        catalogue = len(loaded.recommender.vocab) - 1
        for row, (context, cart) in enumerate(zip(contexts, carts, strict=True)):
            hit = self._cache.get(context.customer_key)
            if (
                hit is not None
                and hit.version == loaded.version
                and hit.orders == _identity(context)
                and abs(context.ts - hit.ts) <= CACHE_TTL_S
                and _enough(hit.scored, cart, self.top_k, catalogue)
            ):
                self._cache.move_to_end(context.customer_key)
                scored[row] = hit.scored
            else:
                misses.setdefault(context.customer_key, []).append(row)
        self.observer.predicted("cache", len(contexts) - len(misses))
        if misses:
            rows = [group[0] for group in misses.values()]
            largest_cart = max(len(carts[r]) for group in misses.values() for r in group)
            started, cpu = time.perf_counter(), time.thread_time()
            rule = loaded.recommender.encoder.product_pattern
            items = loaded.recommender.vocab.clean_index(rule)
            results = loaded.recommender.score_batch(
                [served_history(contexts[r].view, contexts[r].ts, items, rule) for r in rows],
                k=_top_n(self.top_k, largest_cart),
                now=[contexts[r].ts for r in rows],
            )
            self.observer.inferred(time.perf_counter() - started, time.thread_time() - cpu)
            self.observer.predicted("model", len(rows))
            for (customer, group), result in zip(misses.items(), results, strict=True):
                for row in group:
                    scored[row] = result
                self._remember(customer, loaded.version, contexts[group[0]], result)
        similar, strong = loaded.similar, self.add_on_min_similarity
        return [
            _cart_signals(
                loaded.version,
                s,
                cart,
                self.top_k,
                partial(similar.bought_with, cart, self.top_k, strong)
                if similar is not None
                else (),
            )
            for s, cart in zip(scored, carts, strict=True)
        ]

    def _remember(
        self, customer: str, version: str, context: DecisionContext, scored: Scored
    ) -> None:
        self._cache[customer] = _Cached(version, _identity(context), context.ts, scored)
        self._cache.move_to_end(customer)
        if len(self._cache) > CACHE_CUSTOMERS:
            self._cache.popitem(last=False)


def _identity(context: DecisionContext) -> tuple:
    """The orders a decision's history is built from: (ts, order id) of each."""
    return tuple((o[0], o[1]) for o in context.view["orders"] if o[0] <= context.ts)


def _top_n(k: int, cart_size: int) -> int:
    """How many products to rank so that k remain after removing the cart's: a power of two,
    so that a growing cart re-scores only now and then."""
    return 1 << (k + cart_size - 1).bit_length()


def _enough(scored: Scored, cart: set[str], k: int, catalogue: int) -> bool:
    """True when the ranking still has k products outside the cart (or is the catalogue)."""
    outside = sum(1 for p in scored.items if p not in cart)
    return outside >= k or len(scored.items) >= catalogue


def _cart_signals(
    version: str,
    scored: Scored,
    cart: set[str],
    k: int,
    bought_together: Sequence[str] | Callable[[], Sequence[str]],
) -> ModelSignals:
    picks = [(p, s) for p, s in zip(scored.items, scored.scores, strict=True) if p not in cart]
    picks = picks[:k]
    return ModelSignals(
        model_version=version,
        recommendations=tuple(p for p, _ in picks),
        probabilities=tuple(s for _, s in picks),
        cold_start=scored.cold_start,
        neighbours=bought_together,
    )


class NextPurchasePolicy:
    """A base policy's offers, with next-purchase recommendations and signals attached.

    Only carts that get an offer are scored: the signals travel on the offer. A batch whose
    inference fails keeps the base policy's offers.
    """

    def __init__(self, base: Policy, scorer: NextPurchaseScorer) -> None:
        self.base = base
        self.scorer = scorer
        self.name = f"{base.name}+next-purchase"

    def decide_batch(self, contexts: Sequence[DecisionContext]) -> list[Offer | None]:
        offers = self.base.decide_batch(contexts)
        rows = [row for row, offer in enumerate(offers) if offer is not None]
        if not rows:
            return offers
        signals = self.scorer.signals([contexts[row] for row in rows])
        if signals is None:
            return offers
        for row, s in zip(rows, signals, strict=True):
            if s is not None:
                offers[row] = with_signals(offers[row], s)
        return offers


def limit_torch_threads(threads: int) -> None:
    """Inference runs on the event loop's thread: keep torch from fanning out over the cores
    the loop, RocksDB and the Kafka client share."""
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # already set, or parallel work already ran
        torch.set_num_interop_threads(1)
