"""``nextbest bench-actions``: engagement-action ranking and the retention journey, with the
simulator's customers, through Kafka and the real worker.

The customers are the promotion simulator's (``models.promotion.simulator``: one population,
common random numbers), with the ground truth of ``models.promotion.engagement_sim``: hidden
take probabilities of three engagement actions (loyalty, app, newsletter; the catalog's values
are the shop's estimates for the average customer) and churn (a customer's purchase rate decays
while they lapse, unless engaged). Per arm a fresh embedded broker and one worker (the driver,
broker and worker code of ``nextbest bench-promo``, ``agents.tools.promo_kafka_loop``) whose
merchant ranks its actions by ``expected_value`` (P(take) x value) or by ``propensity``
(P(take) alone, Amazon Personalize's way), or has no actions (arm ``none``), or neither actions
nor the retention journey (arm ``no_retention``); everything else is the same: cart offers from
a static promotion policy variant (default 10% off), actions on every cart decision (``combine:
both``) and in journeys' messages (``in_journeys``), the retention journey with its default
options (its 10% holdout; ``--retention-holdout`` to change it).

The driver produces each customer's profile (in-app consent) and past orders, then week by week
in slices of event time the views and carts of the customers who have a cart that week (the
simulator's cart chance times their activity, against the same uniform in every arm); it reads
each cart's decision record from the decisions topic, produces the response to its offer (the
promotion simulator's, as in ``bench-promo``) and to the first engagement action it carried
(``action_shown``, then ``action_taken`` or ``action_dismissed`` from the ground truth: a take
changes the customer's behaviour); it reads the worker's retention messages from the
notifications topic and produces the customer's answer (offer feedback and an order when they
act on it; the message's engagement action as a cart's). The worker learns its take models from
the windows it closes.

Figures per arm: realised value per customer (GBP: the simulated margin of every order less
every discount over the run), takes per action; EV against propensity per customer (paired: the
same customers and random numbers) with a bootstrap interval, and across seeds. Retention: the
customers the journey stepped (treated and holdout, from the worker's state; the messages from
the notifications topic), margin per treated and per holdout customer over the run, the
journey's cost (the discounts its messages gave) and net margin recovered = (treated - holdout
margin) - cost per treated customer, with a bootstrap interval: what the shop can measure. With
the ``no_retention`` arm beside ``none``, also what only a simulator can: each treated customer
against the same customer without the journey (paired, same random numbers).
"""

from __future__ import annotations

import json
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import orjson
from confluent_kafka import Consumer, Message

from agents.tools.promo_kafka_loop import (
    MERCHANT_ID,
    LoopConfig,
    WorkerLoop,
    _event,
    _respond,
    _signals_table,
    decide_carts,
    loop_arguments,
    order_event,
    send_history,
    week_slices,
)
from models.promotion.engagement_sim import (
    ACTIONS,
    CART,
    MESSAGE,
    CustomerWorld,
    EngagementSimConfig,
    EngagementTruth,
    catalog_values,
    engagement_catalog,
)
from models.promotion.simulation import RunResult
from models.promotion.simulator import (
    SIM_MERCHANT,
    Calibration,
    Population,
    SimConfig,
    Simulator,
    calibrate,
    sim_merchant,
)
from streams.merchants.catalog import parse_merchant
from streams.merchants.options import Retention
from streams.outreach import retention
from streams.promotion.experiments import HOLDOUT

EXPECTED_VALUE = "expected_value"
PROPENSITY = "propensity"
NONE = "none"
NO_RETENTION = "no_retention"
ARMS = (NO_RETENTION, NONE, PROPENSITY, EXPECTED_VALUE)
ADMIN_TOKEN = "bench-actions-admin-token"
FEEDBACK = {"taken": "action_taken", "dismissed": "action_dismissed"}


@dataclass
class ActionsConfig:
    loop: LoopConfig = field(
        default_factory=lambda: LoopConfig(
            sim=SimConfig(customers=2000, weeks=12), out=Path("var/bench-actions")
        )
    )
    engagement: EngagementSimConfig = field(default_factory=EngagementSimConfig)
    arms: tuple[str, ...] = ARMS
    offers: str = "static:percent_off:ten-off"  # the promotion policy's variant in every arm
    retention: dict = field(default_factory=dict)  # the journey's options (default: defaults)
    bootstrap: int = 2000


def shop_catalog(config: ActionsConfig, arm: str, values: dict[str, float]) -> dict:
    """The simulated shop of one arm: the simulator's, with the actions (not in ``none`` and
    ``no_retention``) and the retention journey (not in ``no_retention``)."""
    catalog = dict(SIM_MERCHANT, margin_rate=config.loop.sim.margin_rate)
    if arm != NO_RETENTION:
        catalog["journeys"] = {"retention": dict(config.retention)}
    if arm not in (NONE, NO_RETENTION):
        catalog["engagement_actions"] = engagement_catalog(values, config.engagement)
        catalog["engagement"] = {
            "ranking": arm,
            "combine": "both",
            "on_cart": True,
            "in_journeys": True,
        }
    return catalog


@dataclass
class ActionsRun:
    """One arm: per customer value and the world's outcomes, and what the worker wrote."""

    arm: str
    value: np.ndarray  # per customer, GBP
    world: CustomerWorld
    carts: list[str]  # cart event ids, in order
    shown: dict[str, int]  # first-ranked action on a cart or message -> count
    rankings: dict[str, int]  # the ranking mode cart decisions carried -> records
    first_week_candidates: list[int]  # customers with a cart in week 0 (before any was
    # brought forward)
    early_takers: list[int]  # customers who took an action before week 0 (in a message)
    messages: dict[str, int]  # customer index -> retention messages received
    held_out: list[int]  # holdout customers the journey stepped (the worker's state)
    treated: list[int]  # treated customers the journey stepped
    decisions: int
    events_sent: int
    seconds: float


def run_arm(
    config: ActionsConfig,
    population: Population,
    truth: EngagementTruth,
    values: dict[str, float],
    arm: str,
    signals_path: Path,
) -> ActionsRun:
    started = time.perf_counter()
    sim_config = config.loop.sim
    merchant = sim_merchant(MERCHANT_ID, margin_rate=sim_config.margin_rate)
    percent = {p.id: p.percent or 0.0 for p in merchant.promotions}
    sim = Simulator(population, sim_config, merchant)
    world = CustomerWorld(population, sim_config, config.engagement, truth)
    n = len(population.keys)
    index = {customer: i for i, customer in enumerate(population.keys)}
    result = RunResult(arm, np.zeros(n), np.zeros(sim_config.weeks), np.zeros(n, dtype=bool))
    shown: dict[str, int] = dict.fromkeys(ACTIONS, 0)
    rankings: dict[str, int] = {}
    messages: dict[int, int] = {}
    carts: list[str] = []
    first_week: list[int] = []
    early: list[int] = []
    loop = WorkerLoop(
        config.loop,
        arm,
        signals_path,
        catalog=shop_catalog(config, arm, values),
        variant=config.offers,
        settings={"api_admin_token": ADMIN_TOKEN, "api_rate": 0.0},
    )
    notes = loop.topic_reader("notifications")

    def answer_action(i: int, week: int, ts: float, ranked: list[dict] | None, where: int) -> None:
        if not ranked:
            return
        action = ranked[0]["action_id"]
        shown[action] += 1
        customer = population.keys[i]
        kinds = ["action_shown"]
        response = world.show(i, week, action, where)
        kinds += [FEEDBACK[response]] if response in FEEDBACK else []
        for k, kind in enumerate(kinds):
            event_id = f"{customer}-w{week}-{where}-{action}-{kind}"
            loop.send(
                "action_feedback",
                _event(kind, event_id, customer, ts + 30.0 * (k + 1), action_id=action),
            )

    def answer_messages(week: int, ts: float) -> None:
        """The retention messages the worker sent so far, answered at ``ts``."""
        for message in _drain(notes):
            if message.error():
                continue
            note = orjson.loads(message.value())
            if note.get("source") != retention.RETENTION:
                continue
            i = index[note["customer_id"]]
            messages[i] = messages.get(i, 0) + 1
            customer = population.keys[i]
            tag = f"{customer}-{note['dedupe_key']}"
            promotion = note.get("promotion_id")
            basket = world.retention_message(i, week, percent.get(promotion, 0.0))
            if promotion is not None:
                loop.send(
                    "feedback",
                    _event("offer_delivered", f"{tag}-d", customer, ts, offer_id=note["offer_id"]),
                )
            if basket is not None:
                discount = round(percent.get(promotion, 0.0) / 100.0 * basket, 2)
                if promotion is not None:
                    loop.send(
                        "feedback",
                        _event(
                            "offer_redeemed",
                            f"{tag}-r",
                            customer,
                            ts + 60.0,
                            offer_id=note["offer_id"],
                        ),
                    )
                line = {"product_id": "RETURN", "quantity": 1, "unit_price": basket}
                total = round(basket - discount, 2)
                order = order_event(
                    f"{tag}-order", f"{tag}-order", customer, ts + 120.0, [line], total
                )
                loop.send("orders", order)
            answer_action(i, week, ts + 180.0, note.get("engagement_actions"), MESSAGE)

    try:
        for customer in population.keys:
            loop.send("profiles", _profile(customer, sim_config.start - 400 * 86400.0))
        send_history(loop, population)
        answer_messages(0, sim_config.start)
        loop.settle()
        slice_s = config.loop.slice_hours * 3600.0
        for week in range(sim_config.weeks):
            customers = [i for i in range(n) if world.has_cart(i, week)]
            if week == 0:
                first_week = customers
                early = [i for i in range(n) if any(world.taken[a][i] for a in ACTIONS)]
            redeemed_depth = np.zeros(n)
            for batch in week_slices(sim, week, customers, slice_s):
                batch = [(ts, i) for ts, i in batch if world.cart_made(i)]
                if not batch:
                    continue
                events, records = decide_carts(loop, population, week, batch)
                for event, (ts, i), record in zip(events, batch, records, strict=True):
                    carts.append(event["event_id"])
                    if "engagement_ranking" in record:
                        mode = record["engagement_ranking"]
                        rankings[mode] = rankings.get(mode, 0) + 1
                    redeemed_depth[i] = _respond(
                        loop, sim, result, merchant, i, week, ts, event, record, keep_truth=False
                    )
                    answer_action(i, week, ts, record.get("engagement_actions"), CART)
                loop.settle()
                answer_messages(week, batch[-1][0] + 600.0)
                loop.settle()
            sim.end_week(redeemed_depth)
            world.end_week(week)
        stepped = _stepped(loop.port, population.keys)
    finally:
        notes.close()
        loop.close()
    journey = retention_options(config)
    arms = [retention.arm(journey, f"{MERCHANT_ID}:c:{c}") for c in population.keys]
    value = result.profit + world.retention_margin - world.retention_discount
    return ActionsRun(
        arm=arm,
        value=value,
        world=world,
        carts=carts,
        shown=shown,
        rankings=rankings,
        first_week_candidates=first_week,
        early_takers=early,
        messages={str(i): k for i, k in sorted(messages.items())},
        held_out=[i for i in stepped if arms[i] == HOLDOUT],
        treated=[i for i in stepped if arms[i] == retention.TREATED],
        decisions=result.decisions,
        events_sent=loop.sent,
        seconds=round(time.perf_counter() - started, 1),
    )


def retention_options(config: ActionsConfig) -> Retention:
    """The retention options the arms' worker runs (the catalog's, parsed as the worker does)."""
    journey = parse_merchant(MERCHANT_ID, shop_catalog(config, NONE, {})).options.journeys
    if journey.retention is None:
        raise ValueError("the simulated shop has no retention journey")
    return journey.retention


def _profile(customer: str, ts: float) -> dict:
    channels = {"email": None, "sms": None, "push": None, "in_app": True}
    return _event(
        "profile",
        f"profile-{customer}",
        customer,
        ts,
        channels=channels,
        preferred_channel="in_app",
        time_zone="Europe/London",
    )


def _stepped(port: int, customers: list[str]) -> list[int]:
    """The customers the retention journey took a step for (sent, held out or suppressed), read
    from the worker's state (``GET /customers/{key}/``)."""
    stepped = []
    for i, customer in enumerate(customers):
        key = urllib.parse.quote(f"{MERCHANT_ID}:c:{customer}")
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/customers/{key}/",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            state = json.loads(response.read())
        journey = ((state or {}).get("journeys") or {}).get(retention.RETENTION) or {}
        if journey.get("last") is not None:
            stepped.append(i)
    return stepped


# --- figures ----------------------------------------------------------------------------------


def _interval(rng: np.random.Generator, statistic, samples: tuple, resamples: int) -> list[float]:
    """A 95% percentile bootstrap interval of ``statistic`` over independently resampled
    ``samples`` (arrays)."""
    draws = [
        statistic(*(s[rng.integers(len(s), size=len(s))] for s in samples))
        for _ in range(resamples)
    ]
    return [float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))]


ORDER_BANDS = ((1, 1), (2, 2), (3, 4), (5, 9), (10, None))


def _by_orders(run: ActionsRun, stepped: list[int]) -> dict[str, str]:
    """Customers the journey stepped of those with so many orders in the year before the run
    (the default trigger reaches few frequent buyers: docs/churn.md)."""
    orders = np.array([len(h) for h in run.world.pop.history])
    chosen = np.zeros(len(orders), dtype=bool)
    chosen[stepped] = True
    bands = {}
    for low, high in ORDER_BANDS:
        band = (orders >= low) & (orders <= (high if high is not None else orders.max()))
        name = f"{low}" if low == high else f"{low}+" if high is None else f"{low}-{high}"
        bands[name] = f"{int((chosen & band).sum())}/{int(band.sum())}"
    return bands


def _retention(run: ActionsRun, rng: np.random.Generator, resamples: int) -> dict:
    world = run.world
    treated, held = np.array(run.treated, dtype=int), np.array(run.held_out, dtype=int)
    margin = run.value + world.retention_discount  # before the journey's discounts
    cost = world.retention_discount
    figures: dict = {
        "treated_customers": len(treated),
        "holdout_customers": len(held),
        "messages": sum(run.messages.values()),
        "messaged_customers": len(run.messages),
        # consistency: only customers the worker's state shows as treated get a message
        "messaged_not_treated": len({int(i) for i in run.messages} - set(run.treated)),
        "responders": int((world.responded[treated] > 0).sum()) if len(treated) else 0,
        "stepped_by_past_orders": _by_orders(run, [*run.treated, *run.held_out]),
    }
    if len(treated) == 0 or len(held) == 0:
        return figures

    def net(t: np.ndarray, h: np.ndarray) -> float:
        return float(margin[t].mean() - margin[h].mean() - cost[t].mean())

    figures.update(
        margin_per_treated=float(margin[treated].mean()),
        margin_per_holdout=float(margin[held].mean()),
        cost_per_treated=float(cost[treated].mean()),
        cost_total=float(cost.sum()),
        net_recovered_per_treated=net(treated, held),
        net_recovered_interval=_interval(rng, net, (treated, held), resamples),
    )
    return figures


def summarise(config: ActionsConfig, runs: dict[str, ActionsRun], values: dict) -> dict:
    n = config.loop.sim.customers
    rng = np.random.default_rng(config.loop.sim.seed)
    arms = {}
    for arm, run in runs.items():
        arms[arm] = {
            "value_per_customer": float(run.value.sum() / n),
            "takes": {a: int(run.world.taken[a].sum()) for a in ACTIONS},
            "shown": run.shown,
            "rankings": run.rankings,
            "first_week_carts": sum(c.endswith("-w0-cart") for c in run.carts),
            "first_week_candidates": len(run.first_week_candidates),
            "carts": len(run.carts),
            "decisions": run.decisions,
            "retention": _retention(run, rng, config.bootstrap),
            "events_sent": run.events_sent,
            "seconds": run.seconds,
        }
    summary: dict = {"arms": arms, "catalog_values": values}
    if EXPECTED_VALUE in runs and PROPENSITY in runs:
        ev, prop = runs[EXPECTED_VALUE].value, runs[PROPENSITY].value
        diff = ev - prop

        def mean(d: np.ndarray) -> float:
            return float(d.mean())

        summary["ev_minus_propensity"] = float(diff.mean())
        summary["ev_minus_propensity_interval"] = _interval(rng, mean, (diff,), config.bootstrap)
        summary["ratio_ev_vs_propensity"] = float(ev.sum() / prop.sum())
        if NONE in runs:
            base = runs[NONE].value
            gain_ev, gain_prop = float((ev - base).mean()), float((prop - base).mean())
            summary["gain_over_none"] = {EXPECTED_VALUE: gain_ev, PROPENSITY: gain_prop}
            summary["ratio_gain_ev_vs_propensity"] = gain_ev / gain_prop if gain_prop > 0 else None
    if NONE in runs and NO_RETENTION in runs:
        summary["retention_paired"] = _retention_paired(
            runs[NONE], runs[NO_RETENTION], rng, config.bootstrap
        )
    summary["first_week_unexplained"] = _first_week_unexplained(list(runs.values()))
    return summary


def _first_week_unexplained(runs: list[ActionsRun]) -> int:
    """Customers with a cart in week 0 in one arm and not in another, other than those who took
    an action before it in either (a take changes the cart chance): 0 when the arms differ only
    by what the worker did (same population, same random numbers)."""
    first = runs[0]
    unexplained: set[int] = set()
    for run in runs[1:]:
        differ = set(first.first_week_candidates) ^ set(run.first_week_candidates)
        unexplained |= differ - set(first.early_takers) - set(run.early_takers)
    return len(unexplained)


def _retention_paired(
    run: ActionsRun, without: ActionsRun, rng: np.random.Generator, resamples: int
) -> dict:
    """The journey's true effect, which only a simulator can measure: each customer it stepped
    against the same customer, same random numbers, in the run without the journey."""
    treated, held = np.array(run.treated, dtype=int), np.array(run.held_out, dtype=int)
    diff = run.value - without.value

    def mean(d: np.ndarray) -> float:
        return float(d.mean())

    figures: dict = {"treated_customers": len(treated), "holdout_customers": len(held)}
    if len(treated):
        cost = run.world.retention_discount[treated]
        figures.update(
            net_per_treated=float(diff[treated].mean()),
            net_interval=_interval(rng, mean, (diff[treated],), resamples),
            margin_per_treated=float(diff[treated].mean() + cost.mean()),
            cost_per_treated=float(cost.mean()),
        )
    if len(held):  # nothing was sent to them: no difference but the runs' own divergence
        figures["holdout_difference"] = float(diff[held].mean())
    return figures


def bench(config: ActionsConfig, calibration: Calibration | None = None) -> dict:
    """Every arm through the worker on one population and one draw of the ground truth."""
    calibration = calibration or calibrate()
    sim = config.loop.sim
    population = Population.draw(calibration, sim)
    truth = EngagementTruth.draw(population, sim, config.engagement)
    values = catalog_values(population, sim, config.engagement)
    merchant = sim_merchant(MERCHANT_ID, margin_rate=sim.margin_rate)
    out = config.loop.out
    out.mkdir(parents=True, exist_ok=True)
    signals_path = (out / "signals.json").resolve()
    table = _signals_table(Simulator(population, sim, merchant), merchant, every_week=True)
    signals_path.write_text(json.dumps(table))
    runs: dict[str, ActionsRun] = {}
    for arm in config.arms:
        runs[arm] = run = run_arm(config, population, truth, values, arm, signals_path)
        print(
            f"{arm:<16} through the worker: {run.value.sum() / sim.customers:+9.2f} per customer, "
            f"{len(run.carts)} carts, takes "
            f"{ {a: int(run.world.taken[a].sum()) for a in ACTIONS} }, {run.seconds} s",
            flush=True,
        )
    summary = summarise(config, runs, values)
    summary["config"] = {
        **asdict(sim),
        "engagement": asdict(config.engagement),
        "arms": list(config.arms),
        "offers": config.offers,
        "retention": config.retention,
        "partitions": config.loop.partitions,
        "slice_hours": config.loop.slice_hours,
    }
    summary["calibration"] = calibration.sources
    return summary


def _fmt(interval: list[float] | None) -> str:
    return "n/a" if not interval else f"[{interval[0]:+.2f}, {interval[1]:+.2f}]"


def print_summary(summary: dict) -> None:
    config = summary["config"]
    print(
        f"\nThrough the worker: {config['customers']} customers, {config['weeks']} weeks, seed "
        f"{config['seed']}, offers {config['offers']}; catalog values (GBP per take): "
        + ", ".join(f"{a} {v:.2f}" for a, v in summary["catalog_values"].items())
    )
    print(f"{'arm':<16} {'value/customer':>14} {'carts':>6}  takes (shown)")
    for arm, a in summary["arms"].items():
        takes = ", ".join(f"{k} {a['takes'][k]} ({a['shown'][k]})" for k in ACTIONS)
        print(f"{arm:<16} {a['value_per_customer']:>14.2f} {a['carts']:>6}  {takes}")
    if "ev_minus_propensity" in summary:
        print(
            f"expected_value - propensity: {summary['ev_minus_propensity']:+.2f} GBP per customer "
            f"{_fmt(summary['ev_minus_propensity_interval'])}; ratio of value per customer "
            f"{summary['ratio_ev_vs_propensity']:.4f}"
        )
    if "gain_over_none" in summary:
        gain = summary["gain_over_none"]
        ratio = summary["ratio_gain_ev_vs_propensity"]
        print(
            f"gain over no actions: expected_value {gain[EXPECTED_VALUE]:+.2f}, propensity "
            f"{gain[PROPENSITY]:+.2f} GBP per customer (ratio "
            f"{'n/a' if ratio is None else f'{ratio:.2f}'})"
        )
    print(
        "customers with a cart in the first week in one arm and not in another, not explained "
        f"by an action taken before it (must be 0): {summary['first_week_unexplained']}"
    )
    print("Retention journey (customers it stepped; margin over the run, GBP per customer):")
    for arm, a in summary["arms"].items():
        r = a["retention"]
        if "net_recovered_per_treated" not in r:
            print(f"{arm:<16} treated {r['treated_customers']}, holdout {r['holdout_customers']}")
            continue
        bands = ", ".join(f"{k}: {v}" for k, v in r["stepped_by_past_orders"].items())
        print(f"{arm:<16} stepped, by orders in the year before the run: {bands}")
        print(
            f"{arm:<16} treated {r['treated_customers']} (responded {r['responders']}), holdout "
            f"{r['holdout_customers']}: margin {r['margin_per_treated']:.2f} vs "
            f"{r['margin_per_holdout']:.2f}, cost {r['cost_per_treated']:.2f}, net recovered "
            f"{r['net_recovered_per_treated']:+.2f} {_fmt(r['net_recovered_interval'])}"
        )
    paired = summary.get("retention_paired")
    if paired and "net_per_treated" in paired:
        print(
            f"against the same customers without the journey (arm {NO_RETENTION}; the "
            f"simulator's counterfactual): treated {paired['treated_customers']}: margin "
            f"{paired['margin_per_treated']:+.2f}, cost {paired['cost_per_treated']:.2f}, net "
            f"{paired['net_per_treated']:+.2f} {_fmt(paired['net_interval'])} per treated "
            f"customer; holdout {paired['holdout_customers']}: "
            f"{paired.get('holdout_difference', float('nan')):+.2f}"
        )


def _across(values: list[float]) -> tuple[float, list[float] | None]:
    """Mean and 95% t interval across seeds (None for one seed)."""
    from scipy import stats

    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, None
    half = float(
        stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / np.sqrt(len(values))
    )
    return mean, [mean - half, mean + half]


def across_seeds(runs: list[dict]) -> dict:
    """The per-seed figures' means and intervals across seeds."""
    means: dict = {"seeds": [r["config"]["seed"] for r in runs]}
    for arm in runs[0]["arms"]:
        means[f"value_per_customer.{arm}"] = _across(
            [r["arms"][arm]["value_per_customer"] for r in runs]
        )
        nets = [r["arms"][arm]["retention"].get("net_recovered_per_treated") for r in runs]
        if all(v is not None for v in nets):
            means[f"net_recovered_per_treated.{arm}"] = _across(nets)
    paired = [r.get("retention_paired", {}).get("net_per_treated") for r in runs]
    if all(v is not None for v in paired):
        means["retention_paired.net_per_treated"] = _across(paired)
    for name in ("ev_minus_propensity", "ratio_ev_vs_propensity", "ratio_gain_ev_vs_propensity"):
        if all(r.get(name) is not None for r in runs):
            means[name] = _across([r[name] for r in runs])
    return means


def print_across(means: dict) -> None:
    if len(means["seeds"]) < 2:
        return
    print(f"\nAcross seeds {means['seeds']}: mean [95% t interval]")
    for name, figure in means.items():
        if name != "seeds":
            mean, interval = figure
            print(f"{name:<44} {mean:+10.4f} {_fmt(interval)}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = loop_arguments("nextbest bench-actions", __doc__, weeks=12, out="var/bench-actions")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument(
        "--offers", default=ActionsConfig.offers, help="the promotion policy's variant"
    )
    parser.add_argument(
        "--retention-holdout",
        type=float,
        default=None,
        help="the retention journey's holdout share (default: the journey's default)",
    )
    args = parser.parse_args(argv)
    calibration = calibrate()
    runs = []
    for seed in args.seeds:
        config = ActionsConfig(
            loop=LoopConfig(
                sim=SimConfig(customers=args.customers, weeks=args.weeks, seed=seed),
                out=args.out / f"seed-{seed}",
                partitions=args.partitions,
                slice_hours=args.slice_hours,
            ),
            arms=tuple(args.arms),
            offers=args.offers,
            retention=(
                {} if args.retention_holdout is None else {"holdout": args.retention_holdout}
            ),
        )
        runs.append(bench(config, calibration))
        print_summary(runs[-1])
        (config.loop.out / "summary.json").write_text(json.dumps(runs[-1], indent=2) + "\n")
    means = across_seeds(runs)
    print_across(means)
    (args.out / "summary.json").write_text(json.dumps({**means, "runs": runs}, indent=2) + "\n")
    print(f"\nwrote {args.out / 'summary.json'} (every figure) and the runs' logs under it")
    return 0


if __name__ == "__main__":
    sys.exit(main())


def _drain(consumer: Consumer) -> Iterator[Message]:
    """Every message waiting for ``consumer`` now, a thousand at a time, until a read finds none."""
    while batch := consumer.consume(1000, 0.2):
        yield from batch
