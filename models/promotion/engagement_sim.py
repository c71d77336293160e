"""Ground truth for engagement actions and churn, beside the promotion simulator.

The promotion simulator (``models.promotion.simulator``) draws each customer's purchase rate,
baskets and offer response from the real data; this module adds what it does not model, in the
same style (hidden parameters, every one in `EngagementSimConfig` with its assumption, common
random numbers so that two runs differ only by what the worker does):

* **Churn.** A customer is active or lapsing. Each week an active customer starts to lapse with
  a weekly hazard ``h`` (``lapse_hazard`` times a mean-one log-normal, sd ``hazard_spread``:
  some customers drift away faster); a lapsing customer's chance of a cart in a week is
  multiplied by ``lapse_decay`` every week they stay lapsed (their ``activity``, 1 when active,
  ``lapse_decay ** k`` after ``k`` lapsed weeks). An engagement -- a taken action, or a
  retention message the customer acts on -- ends the lapse (activity back to 1). Carts: the
  simulator's weekly cart chance times the activity (and the loyalty lift), against the
  simulator's own pre-drawn uniform of that customer-week.
* **Actions** (`ACTIONS`): a high-take, low-value action beside low-take, high-value ones, as
  in a real shop:

  - ``join-loyalty`` (kind loyalty): taken with probability ``loyalty_take`` at the population's
    mean log order rate, ``loyalty_frequency_slope`` log-odds per unit of log(orders a year)
    above it (frequent buyers join); a member's weekly cart chance rises by ``loyalty_lift``;
  - ``get-app`` (kind app): ``app_take``, ``app_recency_slope`` log-odds more for customers who
    ordered within ``app_recent_days`` before the run; an app user's lapse hazard is multiplied
    by ``app_hazard_factor``;
  - ``newsletter`` (kind newsletter): ``newsletter_take`` (high, for everyone); a lapsing
    subscriber is re-engaged by the newsletter with probability ``newsletter_reengage`` a week.

  Each customer's take log-odds also carry individual noise (sd ``take_spread``, unobserved).
  An action shown and not taken is dismissed with probability ``dismiss_share`` (else ignored).
* **Retention messages.** A customer acts on one with probability ``retention_response`` (at
  the log-odds; plus the customer's discount sensitivity from the simulator, ``s * g / 0.10``,
  when it carries an offer worth a share ``g`` of the basket: the same response model as a cart
  offer). Acting on it is a visit and an order now (the basket of that customer-week, with
  the offer's discount) and an engagement; it is the customer's next purchase brought forward:
  their next cart is not made (a discount given to a customer who would have come back anyway
  costs its discount and brings only an earlier order; what the message gains is the order of
  a customer who would not have come back within the run, and the activity the engagement
  restores).

The value of a take is not the catalog's number: it is the margin of the carts the changed
behaviour brings over the rest of the run (the simulator's margin rate). The catalog's values
(`catalog_values`) are the shop's honest estimates of these effects, derived from this config
for the *average* customer: the population's mean weekly order value times the margin rate
times the change in expected active weeks over the run's horizon that the effect brings
(`expected_activity`, the lapse model above as a Markov chain from an active customer). What a
shop cannot know is each customer's take probability and their own order rate: that is what the
ranking must learn.

Random numbers are drawn from a generator of their own (seeded by the population's seed and a
fixed offset), so the simulator's draws are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.promotion.simulator import (
    REFERENCE_DEPTH,
    WEEK_S,
    WEEKS_PER_YEAR,
    Population,
    SimConfig,
    _logit,
    _lognormal,
    _sigmoid,
)

LOYALTY = "join-loyalty"
APP = "get-app"
NEWSLETTER = "newsletter"
ACTIONS = (LOYALTY, APP, NEWSLETTER)
KINDS = {LOYALTY: "loyalty", APP: "app", NEWSLETTER: "newsletter"}
TITLES = {
    LOYALTY: "Join our loyalty club",
    APP: "Get our app",
    NEWSLETTER: "Subscribe to our newsletter",
}
CART, MESSAGE = 0, 1  # where an action is shown: a cart decision or a journey's message
SEED_OFFSET = 7919  # this module's generator: the population's seed plus this


@dataclass(frozen=True)
class EngagementSimConfig:
    loyalty_take: float = 0.03
    loyalty_frequency_slope: float = 0.8
    loyalty_lift: float = 0.5
    app_take: float = 0.08
    app_recency_slope: float = 1.0
    app_recent_days: float = 30.0
    app_hazard_factor: float = 0.5
    newsletter_take: float = 0.3
    newsletter_reengage: float = 0.04
    take_spread: float = 0.5
    dismiss_share: float = 0.3
    lapse_hazard: float = 0.06
    hazard_spread: float = 0.5
    lapse_decay: float = 0.7
    retention_response: float = 0.04

    @property
    def base_take(self) -> dict[str, float]:
        """The take rates at the population's average: the catalog's prior take rates."""
        return {
            LOYALTY: self.loyalty_take,
            APP: self.app_take,
            NEWSLETTER: self.newsletter_take,
        }


def expected_activity(hazard: float, decay: float, weeks: int, reengage: float = 0.0) -> float:
    """Expected sum over ``weeks`` weeks of the activity (cart-rate multiplier) of a customer
    who starts active, in the lapse model of the module doc (a Markov chain over weeks lapsed)."""
    lapsed = np.zeros(weeks + 1)  # probability of having been lapsed k weeks
    lapsed[0] = 1.0
    total = 0.0
    for _ in range(weeks):
        total += float(lapsed @ decay ** np.arange(weeks + 1))
        nxt = np.zeros_like(lapsed)
        nxt[0] = lapsed[0] * (1.0 - hazard) + lapsed[1:].sum() * reengage
        nxt[1] = lapsed[0] * hazard
        nxt[2:] = lapsed[1:-1] * (1.0 - reengage)
        lapsed = nxt
    return total


def catalog_values(population: Population, sim: SimConfig, config: EngagementSimConfig) -> dict:
    """The shop's estimate of each action's value per take (module doc), in GBP."""
    weekly = float(np.mean(population.orders_per_year * population.mean_basket)) / WEEKS_PER_YEAR
    per_active_week = sim.margin_rate * weekly
    h, d, w = config.lapse_hazard, config.lapse_decay, sim.weeks
    base = expected_activity(h, d, w)
    return {
        LOYALTY: per_active_week * config.loyalty_lift * base,
        APP: per_active_week * (expected_activity(h * config.app_hazard_factor, d, w) - base),
        NEWSLETTER: per_active_week
        * (expected_activity(h, d, w, config.newsletter_reengage) - base),
    }


def engagement_catalog(values: dict[str, float], config: EngagementSimConfig) -> list[dict]:
    """The simulated shop's ``engagement_actions`` (merchant catalog format)."""
    return [
        {
            "id": action,
            "kind": KINDS[action],
            "title": TITLES[action],
            "value": max(0.01, round(values[action], 2)),  # the catalog needs > 0
            "prior_take_rate": config.base_take[action],
            "channels": ["in_app"],
        }
        for action in ACTIONS
    ]


@dataclass
class EngagementTruth:
    """Hidden per-customer take log-odds and hazards, and the common random numbers."""

    take_logit: np.ndarray  # (customers, actions)
    hazard: np.ndarray  # weekly lapse hazard
    u_take: np.ndarray  # (customers, weeks, 2): shown on a cart / in a message
    u_dismiss: np.ndarray  # (customers, weeks, 2)
    u_lapse: np.ndarray  # (customers, weeks)
    u_reengage: np.ndarray  # (customers, weeks)
    u_respond: np.ndarray  # (customers, weeks): acting on a retention message

    @classmethod
    def draw(
        cls, population: Population, sim: SimConfig, config: EngagementSimConfig
    ) -> EngagementTruth:
        rng = np.random.default_rng(sim.seed + SEED_OFFSET)
        n, w = len(population.keys), sim.weeks
        log_rate = np.log(population.orders_per_year)
        last = np.array([max(ts for ts, _ in h) for h in population.history])
        recent = (sim.start - last) <= config.app_recent_days * 86400.0
        noise = rng.normal(0.0, config.take_spread, (n, len(ACTIONS)))
        take_logit = np.stack(
            [
                _logit(config.loyalty_take)
                + config.loyalty_frequency_slope * (log_rate - log_rate.mean()),
                _logit(config.app_take) + config.app_recency_slope * recent,
                np.full(n, _logit(config.newsletter_take)),
            ],
            axis=1,
        )
        return cls(
            take_logit=take_logit + noise,
            hazard=np.minimum(1.0, config.lapse_hazard * _lognormal(rng, config.hazard_spread, n)),
            u_take=rng.random((n, w, 2)),
            u_dismiss=rng.random((n, w, 2)),
            u_lapse=rng.random((n, w)),
            u_reengage=rng.random((n, w)),
            u_respond=rng.random((n, w)),
        )


class CustomerWorld:
    """One run's customers under the ground truth: activity, lapses, who took what, and the
    retention orders. Responses read the common random numbers of the customer-week."""

    def __init__(
        self,
        population: Population,
        sim: SimConfig,
        config: EngagementSimConfig,
        truth: EngagementTruth | None = None,
    ) -> None:
        self.pop = population
        self.sim = sim
        self.config = config
        self.truth = truth or EngagementTruth.draw(population, sim, config)
        n = len(population.keys)
        self.activity = np.ones(n)
        self.lapsing = np.zeros(n, dtype=bool)
        self.taken = {action: np.zeros(n, dtype=bool) for action in ACTIONS}
        self.brought_forward = np.zeros(n, dtype=bool)  # a retention order replaces the next cart
        self.retention_margin = np.zeros(n)  # margin of retention orders (before discounts)
        self.retention_discount = np.zeros(n)
        self.responded = np.zeros(n, dtype=int)  # retention messages acted on

    def cart_probability(self, i: int) -> float:
        lift = 1.0 + self.config.loyalty_lift * self.taken[LOYALTY][i]
        return min(1.0, float(self.pop.cart_rate[i]) * float(self.activity[i]) * lift)

    def has_cart(self, i: int, week: int) -> bool:
        """Whether the customer would make a cart this week (see `cart_made`)."""
        return bool(self.pop.u_cart[i, week] < self.cart_probability(i))

    def cart_made(self, i: int) -> bool:
        """The customer's cart is made, unless a retention order brought it forward (which
        uses that order up)."""
        if self.brought_forward[i]:
            self.brought_forward[i] = False
            return False
        return True

    def p_take(self, i: int, action: str) -> float:
        return float(_sigmoid(self.truth.take_logit[i, ACTIONS.index(action)]))

    def show(self, i: int, week: int, action: str, where: int) -> str:
        """The customer's answer to ``action`` shown at a cart or in a message this week:
        ``taken``, ``dismissed`` or ``ignored``; a take changes their behaviour."""
        if self.taken[action][i]:
            return "ignored"  # already a member: nothing changes
        if self.truth.u_take[i, week, where] < self.p_take(i, action):
            self.taken[action][i] = True
            self.engage(i)
            return "taken"
        if self.truth.u_dismiss[i, week, where] < self.config.dismiss_share:
            return "dismissed"
        return "ignored"

    def engage(self, i: int) -> None:
        self.activity[i] = 1.0
        self.lapsing[i] = False

    def p_respond(self, i: int, depth: float) -> float:
        """P(acting on a retention message carrying an offer worth ``depth`` of the basket)."""
        logit = _logit(self.config.retention_response) + self.pop.sensitivity[i] * (
            depth / REFERENCE_DEPTH
        )
        return float(_sigmoid(logit))

    def retention_message(self, i: int, week: int, percent_off: float) -> float | None:
        """A retention message reached customer ``i`` in ``week`` with ``percent_off`` (0: no
        offer): the basket of the order they place now, or None if they do not act on it."""
        depth = percent_off / 100.0
        if self.truth.u_respond[i, week] >= self.p_respond(i, depth):
            return None
        basket = float(self.pop.cart_value[i, week])
        self.responded[i] += 1
        self.retention_margin[i] += self.sim.margin_rate * basket
        self.retention_discount[i] += round(depth * basket, 2)
        self.brought_forward[i] = True
        self.engage(i)
        return basket

    def end_week(self, week: int) -> None:
        """Lapses start (at the hazard, lower for app users), go on (activity decays) or end
        (a subscriber re-engaged by the newsletter)."""
        t = self.truth
        hazard = t.hazard * np.where(self.taken[APP], self.config.app_hazard_factor, 1.0)
        reengaged = self.lapsing & self.taken[NEWSLETTER]
        reengaged &= t.u_reengage[:, week] < self.config.newsletter_reengage
        starts = ~self.lapsing & (t.u_lapse[:, week] < hazard)
        decaying = self.lapsing | starts
        self.activity = np.where(decaying, self.activity * self.config.lapse_decay, 1.0)
        self.activity[reengaged] = 1.0
        self.lapsing = decaying & ~reengaged


def week_of(sim: SimConfig, ts: float) -> int:
    """The run's week of an event time, clipped to the run."""
    return int(min(max((ts - sim.start) // WEEK_S, 0), sim.weeks - 1))
