"""Customer-response simulator for promotion policies: seeded, with a known ground truth.

Separate from the policy code: policies see only what a worker sees (customer state dicts built
by ``streams.state.customer_state`` from simulated events, carts, next-purchase signals, feedback
and order events); the simulator alone knows each customer's hidden parameters, so it can say what
any action at any cart is worth (`Simulator.expected_profit`).

Customers (`Population.draw`), drawn to match real data (`calibrate`):

* Purchase frequency and basket value: each simulated customer copies a random real customer of
  UCI Online Retail (orders per year ``n``, mean invoice value ``M``); a cart's value is ``M``
  times a mean-one log-normal with the real within-customer spread of log invoice values
  (sd 0.84), capped at ``max_basket``. A year of past orders at that rate is replayed into the
  state before the run (recency, frequency, monetary, tenure are real-scale).
* Base purchase probability per cart (no offer): log-odds ``logit(cart_conversion)`` (0.30:
  7 in 10 carts are abandoned) plus the Hillstrom control visit rate's log-odds deviation of the
  customer's cell (recency bin x spend tercile, matched by the customer's own recency and
  yearly spend) plus individual noise (sd ``conversion_spread``, unobserved). A customer has a
  cart in a week with probability ``n / 52 / base``, so without offers they buy at their real rate.
* Discount sensitivity: an offer worth a share ``g`` of the basket adds ``s * g / 0.10`` to the
  purchase log-odds, where ``s`` is the Hillstrom e-mail's log-odds lift in the customer's
  cell -- the cells' lift on visits, scaled so that its overall value is the e-mail's overall
  lift on conversions (0.63; purchases respond more than visits, and per cell conversions are
  too few to read): 0.50 to 0.93 -- times a mean-one log-normal (sd ``sensitivity_spread``,
  unobserved). A 10%-off offer is taken to move a customer as much as the e-mail did.
* Habituation: each redeemed offer of depth ``g`` adds ``g / 0.10`` to the customer's
  dependency ``D``, which decays with a half-life of ``habituation_half_life_weeks``; the
  no-offer log-odds drop by ``habituation * D``. Deep, frequent discounts train customers to
  buy less without one.
* Responses: free shipping and %-off are worth their discount; a threshold nudge is taken
  (the customer tops the cart up to the tier) with probability ``exp(-gap / (topup_scale *
  cart))`` and then acts like the tier's offer on the bigger basket, else like no offer; a
  product coupon is worth ``q * discount`` where ``q`` is the chance that the predicted product
  is really the customer's next pick, and is redeemed (product added) with probability ``q``.
  A redeemed coupon's product is the customer's next pick: bought now at a discount, it is a
  full-price sale lost from their next order if that order comes within the horizon
  (probability ``1 - exp(-weekly order rate * horizon_weeks)``, with the customer's true
  rate). That loss is booked at redemption in the simulator's profit (its expected value) --
  the reward join cannot see it, as it happens after the attribution window.
* Next-purchase signals are synthetic: a candidate product with a list price drawn from real
  Online Retail line values and ``q ~ Beta(2, 5)`` (mean 0.29, near the next-purchase model's
  Hit@1), propensity ``min(1, 2 q)``.
* Before the run the shop is assumed to have offered 10% off on ``prior_offer_share`` of the
  customer's past carts (a promotion history): those offers and their redemptions, drawn from
  the customer's true response, are in the state's offer counters.

Randomness is common across policies: every customer-week has its own pre-drawn uniforms
(cart or not, buy or not, top-up, product, open), so two policies differ only by what they do.
All parameters are in `SimConfig`; the defaults are the documented assumptions above.
"""

from __future__ import annotations

import gzip
import hashlib
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from streams.merchants.catalog import Merchant, parse_merchant
from streams.promotion.actions import Action
from streams.state.customer_state import apply_event, new_state

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
ONLINE_RETAIL = DATA / "online_retail.csv.gz"
HILLSTROM = DATA / "hillstrom.csv.gz"
WEEK_S = 7 * 86400.0
WEEKS_PER_YEAR = 365.0 / 7.0
REFERENCE_DEPTH = 0.10
RECENCY_BINS = (3, 6, 9)  # Hillstrom months since last purchase: (0,3], (3,6], (6,9], (9,12]
START = datetime(2012, 1, 2, tzinfo=UTC).timestamp()

#: The simulated shop (a catalog in the merchants-file format): UCI's shipping cost, a 50%
#: gross margin (assumed: a retailer of its own-design gifts; ``SimConfig.margin_rate``), tiers
#: from 5% to 20% off, a 15% tier at £300 that carts within £100 are nudged
#: to, a 20% coupon on the predicted next product, offers valid for 3 days.
SIM_MERCHANT = {
    "name": "Simulated gift shop",
    "currency": "GBP",
    "shipping_cost": 6.95,
    "nudge_max_gap": 100,
    "margin_rate": 0.5,
    "offer_ttl_hours": 72,
    "promotions": [
        {"id": "free-shipping-60", "type": "free_shipping", "min_spend": 60},
        {"id": "five-off", "type": "percent_off", "percent": 5, "min_spend": 0},
        {"id": "ten-off", "type": "percent_off", "percent": 10, "min_spend": 0},
        {"id": "fifteen-off-300", "type": "percent_off", "percent": 15, "min_spend": 300},
        {"id": "twenty-off", "type": "percent_off", "percent": 20, "min_spend": 0},
        {"id": "coupon-20", "type": "product_coupon", "percent": 20},
    ],
}


def sim_merchant(
    merchant_id: str = "sim-shop",
    margin_rate: float | None = None,
    deep_discount_cost: float | None = None,
) -> Merchant:
    config = dict(SIM_MERCHANT)
    if margin_rate is not None:
        config["margin_rate"] = margin_rate
    if deep_discount_cost is not None:
        config["deep_discount_cost"] = deep_discount_cost
    return parse_merchant(merchant_id, config)


def _sigmoid(x: np.ndarray | float) -> np.ndarray | float:
    return 1.0 / (1.0 + np.exp(-x))


def _logit(p: np.ndarray | float) -> np.ndarray | float:
    return np.log(p / (1.0 - p))


@dataclass(frozen=True)
class Calibration:
    """What the simulator takes from the real data."""

    orders_per_year: np.ndarray  # per Online Retail customer
    mean_basket: np.ndarray  # per Online Retail customer (same order)
    basket_log_sd: float  # within-customer sd of log invoice value
    line_values: np.ndarray  # product line values (quantity x unit price), a sample
    control_rate: np.ndarray  # Hillstrom control visit rate, (recency bin, spend tercile)
    lift: np.ndarray  # Hillstrom e-mail log-odds lift on visits, same cells
    sources: dict = field(default_factory=dict)

    @property
    def control_deviation(self) -> np.ndarray:
        """Per cell, control log-odds minus their customer-weighted mean."""
        logit = _logit(self.control_rate)
        return logit - logit.mean()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def calibrate(online_retail: Path = ONLINE_RETAIL, hillstrom: Path = HILLSTROM) -> Calibration:
    """Read the two real data sets (see ``../shared/data/SOURCES.md``)."""
    with gzip.open(online_retail, "rt", encoding="utf-8") as f:
        lines = pd.read_csv(
            f,
            usecols=["InvoiceNo", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID"],
            dtype={"InvoiceNo": str, "CustomerID": str},
        )
    lines = lines[
        lines.CustomerID.notna()
        & ~lines.InvoiceNo.str.startswith("C")
        & (lines.Quantity > 0)
        & (lines.UnitPrice > 0)
    ]
    lines = lines.assign(value=lines.Quantity * lines.UnitPrice)
    when = pd.to_datetime(lines.InvoiceDate)
    weeks = (when.max() - when.min()).days / 7.0
    invoices = lines.groupby(["CustomerID", "InvoiceNo"]).value.sum().reset_index()
    customers = invoices.groupby("CustomerID").value.agg(["size", "mean"])
    invoices = invoices.merge(customers, left_on="CustomerID", right_index=True)
    within = float(np.log(invoices.value / invoices["mean"]).std())
    rng = np.random.default_rng(0)
    line_values = rng.choice(lines.value.to_numpy(), size=20000, replace=False)

    h = pd.read_csv(hillstrom)
    h = h.assign(
        treated=h.segment != "No E-Mail",
        rbin=np.digitize(h.recency, RECENCY_BINS, right=True),
        hbin=pd.qcut(h.history, 3, labels=False),
    )
    rates = h.groupby(["rbin", "hbin", "treated"]).visit.mean().unstack()
    control = rates[False].to_numpy().reshape(4, 3)
    treated = rates[True].to_numpy().reshape(4, 3)
    # Purchases respond more than visits: scale the cells' visit lift (conversions per cell are
    # too few to read) so that its overall value is the e-mail's overall conversion lift.
    visit_lift, conversion_lift = _email_lifts(h)
    return Calibration(
        orders_per_year=customers["size"].to_numpy(dtype=float) * WEEKS_PER_YEAR / weeks,
        mean_basket=customers["mean"].to_numpy(dtype=float),
        basket_log_sd=within,
        line_values=line_values,
        control_rate=control,
        lift=(_logit(treated) - _logit(control)) * conversion_lift / visit_lift,
        sources={
            "online_retail": _sha(online_retail),
            "hillstrom": _sha(hillstrom),
            "customers": len(customers),
            "hillstrom_rows": len(h),
        },
    )


def _email_lifts(hillstrom: pd.DataFrame) -> tuple[float, float]:
    """The Hillstrom e-mail's overall log-odds lift on visits and on conversions."""
    overall = hillstrom.groupby(hillstrom.segment != "No E-Mail")[["visit", "conversion"]].mean()
    visit = _logit(overall.visit[True]) - _logit(overall.visit[False])
    return float(visit), float(_logit(overall.conversion[True]) - _logit(overall.conversion[False]))


def conversion_lift(hillstrom: Path = HILLSTROM) -> float:
    """The e-mail's overall log-odds lift on conversions (0.63): the discount sensitivity of the
    average customer, per 10% of the basket (see the module doc)."""
    return _email_lifts(pd.read_csv(hillstrom, usecols=["segment", "visit", "conversion"]))[1]


def offer_take_up(base_logit: float, sensitivity: float, depth: float) -> float:
    """P(a cart that is not bought without an offer is bought with an offer worth ``depth`` of
    its basket), in the response model above: with no offer the cart is bought when a uniform
    ``u < p(0)``, with the offer when ``u < p(depth)``, ``logit p(g) = base_logit + sensitivity *
    g / 0.10``; so of the carts not bought without it, the share ``(p(g) - p(0)) / (1 - p(0))``
    is bought with it (0 for no discount)."""
    p0 = float(_sigmoid(base_logit))
    p = float(_sigmoid(base_logit + sensitivity * max(depth, 0.0) / REFERENCE_DEPTH))
    return (p - p0) / (1.0 - p0) if p0 < 1.0 else 0.0


@dataclass(frozen=True)
class SimConfig:
    customers: int = 10_000
    weeks: int = 10
    seed: int = 0
    cart_conversion: float = 0.30
    intent_spread: float = 1.0
    browse_views: float = 3.0
    intent_views: float = 0.7
    conversion_spread: float = 0.5
    sensitivity_spread: float = 0.5
    habituation: float = 0.10
    habituation_half_life_weeks: float = 12.0
    topup_scale: float = 0.5
    open_rate: float = 0.4
    prior_offer_share: float = 0.3
    max_basket: float = 5000.0
    horizon_weeks: float = 10.0
    margin_rate: float = 0.5
    start: float = START


@dataclass
class Population:
    """Hidden per-customer parameters and the common random numbers of one seed."""

    keys: list[str]
    orders_per_year: np.ndarray
    mean_basket: np.ndarray
    base_logit: np.ndarray  # no-offer purchase log-odds per cart, before habituation
    cart_rate: np.ndarray  # P(a cart in a week)
    sensitivity: np.ndarray  # log-odds per 10% of the basket
    u_cart: np.ndarray  # (customers, weeks) uniforms ...
    u_buy: np.ndarray
    u_topup: np.ndarray
    u_item: np.ndarray
    u_open: np.ndarray
    intent: np.ndarray  # (customers, weeks): the cart's purchase intent, standard normal
    views: np.ndarray  # (customers, weeks): products viewed in the session before the cart
    cart_time: np.ndarray  # seconds into the week
    cart_value: np.ndarray  # (customers, weeks)
    coupon_price: np.ndarray
    coupon_q: np.ndarray
    history: list[list[tuple[float, float]]]  # past orders (ts, total) per customer
    prior: np.ndarray  # (customers, 3): carts, offers received, offers redeemed in the past year

    @classmethod
    def draw(cls, calibration: Calibration, config: SimConfig) -> Population:
        rng = np.random.default_rng(config.seed)
        n, w = config.customers, config.weeks
        pick = rng.integers(len(calibration.orders_per_year), size=n)
        orders = calibration.orders_per_year[pick]
        basket = calibration.mean_basket[pick]
        # Hillstrom cell: spend tercile, and the recency bin of a year of orders at the
        # customer's real rate (a Poisson process; at least one order, as every UCI customer).
        counts = np.maximum(1, rng.poisson(orders))
        recency_months = np.array([rng.uniform(0, 12.0, size=c).min() for c in counts])
        rbin = np.digitize(recency_months, RECENCY_BINS, right=True).clip(0, 3)
        spend = orders * basket
        hbin = np.digitize(spend, np.quantile(spend, [1 / 3, 2 / 3]))
        base_logit = (
            _logit(config.cart_conversion)
            + calibration.control_deviation[rbin, hbin]
            + rng.normal(0.0, config.conversion_spread, n)
        )
        weekly = orders / WEEKS_PER_YEAR
        base = _mean_conversion(base_logit, config.intent_spread)
        cart_rate = np.minimum(1.0, weekly / base)
        frequent = weekly > base  # buys more often than carts convert: every week, higher base
        target = np.minimum(weekly, 0.95)
        base_logit = np.where(frequent, _logit_for(target, config.intent_spread), base_logit)
        sensitivity = calibration.lift[rbin, hbin] * _lognormal(rng, config.sensitivity_spread, n)
        value = basket[:, None] * _lognormal(rng, calibration.basket_log_sd, (n, w))
        intent = rng.standard_normal((n, w))
        history, prior = [], np.zeros((n, 3), dtype=int)
        for i in range(n):
            carts = max(1, rng.poisson(cart_rate[i] * WEEKS_PER_YEAR))
            offered = rng.random(carts) < config.prior_offer_share
            past_intent = config.intent_spread * rng.standard_normal(carts)
            logit = base_logit[i] + past_intent + sensitivity[i] * offered
            bought = rng.random(carts) < _sigmoid(logit)
            bought[-1] |= not bought.any()  # every customer has ordered at least once
            times = np.sort(config.start - rng.uniform(0, 365 * 86400.0, size=carts))[bought]
            totals = basket[i] * _lognormal(rng, calibration.basket_log_sd, len(times))
            history.append(list(zip(times.tolist(), np.round(totals, 2).tolist(), strict=True)))
            prior[i] = (carts, offered.sum(), (offered & bought).sum())
        return cls(
            keys=[f"c{i:06d}" for i in range(n)],
            orders_per_year=orders,
            mean_basket=basket,
            base_logit=base_logit,
            cart_rate=cart_rate,
            sensitivity=sensitivity,
            u_cart=rng.random((n, w)),
            u_buy=rng.random((n, w)),
            u_topup=rng.random((n, w)),
            u_item=rng.random((n, w)),
            u_open=rng.random((n, w)),
            intent=intent,
            views=rng.poisson(config.browse_views * np.exp(-config.intent_views * intent)),
            cart_time=rng.uniform(0, 4 * 86400.0, (n, w)),
            cart_value=np.clip(np.round(value, 2), 5.0, config.max_basket),
            coupon_price=rng.choice(calibration.line_values, size=(n, w)),
            coupon_q=rng.beta(2.0, 5.0, (n, w)),
            history=history,
            prior=prior,
        )


def _mean_conversion(base_logit: np.ndarray, intent_spread: float) -> np.ndarray:
    """Mean P(buy) over carts of normally distributed intent (Gauss-Hermite, 20 nodes)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(20)
    p = _sigmoid(base_logit[:, None] + intent_spread * nodes[None, :])
    return p @ (weights / weights.sum())


def _logit_for(mean: np.ndarray, intent_spread: float) -> np.ndarray:
    """Base log-odds whose mean conversion over intents is ``mean`` (bisection)."""
    low, high = np.full(len(mean), -15.0), np.full(len(mean), 15.0)
    for _ in range(50):
        middle = (low + high) / 2.0
        below = _mean_conversion(middle, intent_spread) < mean
        low, high = np.where(below, middle, low), np.where(below, high, middle)
    return (low + high) / 2.0


def _lognormal(rng: np.random.Generator, sd: float, size: int | tuple) -> np.ndarray:
    """Mean-one log-normal multipliers."""
    return np.exp(rng.normal(-sd * sd / 2.0, sd, size))


@dataclass(frozen=True)
class Outcome:
    purchased: bool
    redeemed: bool
    basket: float  # list-price value of the order
    discount: float
    paid: float  # what the customer paid for the goods
    profit: float  # margin - discount - a coupon's lost future sale
    depth: float  # discount / basket when redeemed
    future_loss: float = 0.0  # a coupon's lost future full-price sale (in ``profit``)


@dataclass
class SimSignals:
    """Synthetic next-purchase outputs (``streams.promotion.features.NextPurchaseSignals``)."""

    coupon_product_id: str
    coupon_probability: float
    purchase_propensity: float
    coupon_price: float
    recommendations: tuple[str, ...] = ()


class Simulator:
    """One population under one policy: customer states, habituation, truth, outcomes."""

    def __init__(self, population: Population, config: SimConfig, merchant: Merchant) -> None:
        self.pop = population
        self.config = config
        self.merchant = merchant
        self.dependency = np.zeros(len(population.keys))
        self.decay = 0.5 ** (1.0 / config.habituation_half_life_weeks)
        self.states = [self._initial_state(i) for i in range(len(population.keys))]

    def _initial_state(self, i: int) -> dict:
        state = new_state()
        for k, (ts, total) in enumerate(self.pop.history[i]):
            event = {
                "event_id": f"h{i}-{k}",
                "event_type": "order",
                "order_id": f"h{i}-{k}",
                "lines": [{"product_id": "PAST", "quantity": 1, "unit_price": total}],
                "total": total,
                "currency": "GBP",
                "_ts": ts,
            }
            apply_event(state, "orders", event)
        carts, received, redeemed = (int(v) for v in self.pop.prior[i])
        state["sessions"] = carts  # one shopping session per past cart
        offers = state["offers"]
        offers.update(received=received, delivered=received, redeemed=redeemed)
        offers["opened"] = min(received, redeemed + round((received - redeemed) * 0.4))
        return state

    def week_start(self, week: int) -> float:
        return self.config.start + week * WEEK_S

    def has_cart(self, i: int, week: int) -> bool:
        return bool(self.pop.u_cart[i, week] < self.pop.cart_rate[i])

    def signals(self, i: int, week: int) -> SimSignals:
        q = float(self.pop.coupon_q[i, week])
        product = f"P{i % 997:03d}-{week}"
        return SimSignals(
            coupon_product_id=product,
            coupon_probability=round(q, 4),
            purchase_propensity=round(min(1.0, 2.0 * q), 4),
            coupon_price=round(float(self.pop.coupon_price[i, week]), 2),
            recommendations=(product,),
        )

    # -- the truth ----------------------------------------------------------------------------

    def _p(self, i: int, week: int, depth: float) -> float:
        """P(buy) at customer ``i``'s cart of ``week`` with an offer of this depth."""
        logit = (
            self.pop.base_logit[i]
            + self.config.intent_spread * self.pop.intent[i, week]
            - self.config.habituation * self.dependency[i]
            + self.pop.sensitivity[i] * depth / REFERENCE_DEPTH
        )
        return float(_sigmoid(logit))

    def _topup(self, action: Action) -> float:
        return math.exp(-(action.gap or 0.0) / (self.config.topup_scale * action.cart_value))

    def expected_profit(self, i: int, week: int, action: Action, future_loss: bool = True) -> float:
        """Expected profit of ``action`` at customer ``i``'s cart now (the ground truth).

        ``future_loss=False`` leaves out a coupon's lost later sale: the expected *reward*, what
        the reward join measures within the attribution window (off-policy evaluation's truth).
        """
        m = self.merchant.margin_rate
        cart = action.cart_value
        p0 = self._p(i, week, 0.0)
        if action.kind == "none":
            return p0 * m * cart
        if action.kind == "threshold_nudge":
            tau = self._topup(action)
            p = self._p(i, week, action.depth)
            return tau * p * action.margin(m) + (1.0 - tau) * p0 * m * cart
        if action.kind == "product_coupon":
            q = float(self.pop.coupon_q[i, week])
            p = self._p(i, week, q * action.discount / cart)
            redeemed = action.margin(m) - (self._cannibalised(i, action) if future_loss else 0.0)
            return p * (q * redeemed + (1.0 - q) * m * cart)
        return self._p(i, week, action.depth) * action.margin(m)

    def respond(self, i: int, week: int, action: Action) -> Outcome:
        """The customer's response, with this customer-week's common random numbers."""
        m = self.merchant.margin_rate
        cart = action.cart_value
        u_buy = self.pop.u_buy[i, week]
        offered = action.kind != "none"
        if action.kind == "threshold_nudge" and self.pop.u_topup[i, week] >= self._topup(action):
            offered = False  # not topped up: the customer acts as with no offer
        if action.kind == "product_coupon":
            q = float(self.pop.coupon_q[i, week])
            p = self._p(i, week, q * action.discount / cart)
            offered = bool(self.pop.u_item[i, week] < q)  # redeemed if they buy
        else:
            p = self._p(i, week, action.depth if offered else 0.0)
        if u_buy >= p:
            return Outcome(False, False, 0.0, 0.0, 0.0, 0.0, 0.0)
        if not offered:
            return Outcome(True, False, cart, 0.0, cart, round(m * cart, 2), 0.0)
        discount = action.discount
        basket = action.basket
        shipping = action.promotion is not None and action.promotion.type == "free_shipping"
        paid = basket if shipping else basket - discount  # free shipping: goods at full price
        loss = self._cannibalised(i, action) if action.kind == "product_coupon" else 0.0
        profit = round(m * basket - discount - loss, 2)
        return Outcome(
            True, True, basket, discount, round(paid, 2), profit, discount / basket, loss
        )

    def _cannibalised(self, i: int, action: Action) -> float:
        """Expected margin of the full-price sale a redeemed coupon takes from a later order."""
        rate = self.pop.orders_per_year[i] / WEEKS_PER_YEAR
        repurchase = 1.0 - math.exp(-rate * self.config.horizon_weeks)
        return repurchase * self.merchant.margin_rate * (action.basket - action.cart_value)

    def end_week(self, redeemed_depth: np.ndarray) -> None:
        """Decay dependency and add this week's redeemed depths (per customer)."""
        self.dependency = self.dependency * self.decay + redeemed_depth / REFERENCE_DEPTH
