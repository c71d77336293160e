"""``nextbest bench-promo``: the promotion simulator's loop through Kafka and the real worker.

The same simulated customers as ``nextbest simulate`` (``models.promotion.simulator``: one
population,
common random numbers), but every decision is made by a real worker process
(``NEXTBEST_POLICY=promotion``, ``agents.worker.build``) on the embedded broker, and every
reward is joined and learned in that worker's stream:

1. per arm, a fresh embedded broker and one worker whose experiment serves the arm's variant to
   everyone (no holdout): ``static:none``, each single static offer (``static:<action>``) or the
   learned bandit (``bandit``); the population is the same in every arm;
2. the customers' past orders (a year, at their real rate) are produced to the orders topic;
3. week by week, in slices of event time (default one day, shorter than the offers' 72-hour
   attribution window): the slice's product views, then its carts (``cart_add``, the same
   schemas and murmur2 keys as any producer); the driver reads the worker's decision records
   from the decisions topic, draws each customer's response from the simulator's ground truth
   and produces it back: offer feedback (delivered, opened, redeemed, with the worker's
   ``offer_id``), the order and the end of the cart (checkout or clear). The worker's reward
   join closes each decision's window as event time moves on (later slices), emits rewards and
   the bandit learns from them, online;
4. after the last week a page view per customer a few weeks later closes every open window;
   the worker is stopped (SIGTERM: the bandit is checkpointed) and the rewards topic is read.

Cross-topic order is not guaranteed by Kafka, so the driver waits after each step until the
worker has processed everything it produced (its ``/metrics`` counters); a dead letter stops the
run. The next-purchase signals (coupon candidate, propensity) are the simulator's synthetic ones:
the driver writes them to a file and the worker process is started with a signals provider that
reads it (``worker`` sub-command; the rest of the worker is ``agents.worker.build``). Unlike the
offline run, the worker's customers have no offer history from before the run (offers received
are counted by the worker itself; an event cannot set them).

Figures per arm: the simulator's realised 10-week profit per customer minus the no-offer arm's
(GBP), the share of customers sent a deep discount (>= 15% of the basket), and for the learned
arm off-policy evaluation (``models.promotion.ope``, the functions behind ``nextbest ope``) from the
decision log the worker wrote, against the simulator's true value of each candidate on the
logged carts. The static arms are also run offline (``models.promotion.simulation.run_policy``) on
the same population: a static policy makes the same decisions in both, so their figures must
agree (a parity check of the loop).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from agents.runtime.settings import Settings
from agents.runtime.topics import ensure_topics
from agents.tools.broker import EmbeddedBroker, free_port, wait_for_port
from agents.tools.processes import PROCESSED, scrape, start_worker, stop_worker
from agents.tools.replay import producer_config
from models.promotion import ope
from models.promotion.simulation import (
    ALWAYS_20,
    DEEP,
    STATIC,
    RunResult,
    _cart_event,
    _views,
    ope_check,
    print_ope_rows,
    run_policy,
)
from models.promotion.simulator import (
    SIM_MERCHANT,
    Calibration,
    Population,
    SimConfig,
    SimSignals,
    Simulator,
    calibrate,
    sim_merchant,
)
from schemas.keys import iso
from streams.merchants.catalog import Merchant
from streams.promotion.actions import Action, CouponCandidate, candidate_actions, no_offer

MERCHANT_ID = "sim-shop"
LEARNED = "learned"
NONE = "none"


def arm_variant(arm: str) -> str:
    """The worker's policy variant for an arm name: ``none``, a static action or ``learned``."""
    if arm == LEARNED:
        return "bandit"
    if arm == NONE or arm in STATIC:
        return f"static:{arm}"
    raise ValueError(f"unknown arm {arm!r} (none, learned, {', '.join(STATIC)})")


@dataclass
class LoopConfig:
    sim: SimConfig = field(default_factory=lambda: SimConfig(customers=2000, weeks=10))
    arms: tuple[str, ...] = (NONE, *STATIC, LEARNED)
    out: Path = Path("var/bench-promo")
    partitions: int = 4
    slice_hours: float = 24.0
    offline: bool = True  # also run the arms offline on the same population (parity)
    timeout_s: float = 120.0  # the longest wait for the worker at one step


# --- the worker process -----------------------------------------------------------------------


def _signals_table(sim: Simulator, merchant: Merchant, every_week: bool = False) -> dict[str, list]:
    """The synthetic next-purchase signals of every cart, by cart event id (``every_week``: of
    every customer-week, for a run whose carts depend on what the worker does)."""
    table = {}
    for i, customer in enumerate(sim.pop.keys):
        key = f"{merchant.id}:c:{customer}"
        for week in range(sim.config.weeks):
            if every_week or sim.has_cart(i, week):
                s = sim.signals(i, week)
                table[f"{key}-w{week}-cart"] = [
                    s.coupon_product_id,
                    s.coupon_probability,
                    s.purchase_propensity,
                    s.coupon_price,
                ]
    return table


def serve(signals_path: Path) -> None:
    """Run a worker (settings from ``NEXTBEST_*``) whose next-purchase signals come from the
    simulator's file instead of a model; everything else is ``agents.worker.build``."""
    import mode.loop

    from agents.worker import build, run_faust_worker

    table = json.loads(signals_path.read_text())

    def signals(contexts: Sequence) -> list[SimSignals | None]:
        rows = [table.get(c.cart_event_id) for c in contexts]
        return [SimSignals(*row, recommendations=(row[0],)) if row else None for row in rows]

    settings = Settings.from_env()
    mode.loop.use("uvloop")
    ensure_topics(settings)
    nb = build(settings, signals=signals)
    run_faust_worker(nb.app, settings.log_level)


# --- one arm through the broker and the worker ------------------------------------------------


@dataclass
class ArmRun:
    """One arm's run through the worker: the driver's view plus what the worker wrote."""

    arm: str
    result: RunResult
    decisions: list[dict]
    rewards: list[dict]
    offers_emitted: int
    bandit_updates: int | None  # learned updates in the worker's checkpoint (learned arm)
    checkpoint: Path | None
    events_sent: int
    seconds: float


class WorkerLoop:
    """A broker, one worker and the driver's producer and decision reader, for one arm.

    ``catalog``: the simulated merchant's catalog (default: the simulator's shop), ``variant``:
    the promotion policy's (default: the arm's), ``settings``: more worker settings."""

    def __init__(
        self,
        config: LoopConfig,
        arm: str,
        signals_path: Path,
        catalog: dict | None = None,
        variant: str | None = None,
        settings: dict | None = None,
    ) -> None:
        self.config = config
        self.arm = arm
        self.dir = config.out / "runs" / arm
        shutil.rmtree(self.dir / "state", ignore_errors=True)  # a fresh broker: a fresh state
        self.dir.mkdir(parents=True, exist_ok=True)
        merchants = self.dir / "merchants.yaml"
        catalog = catalog or dict(SIM_MERCHANT, margin_rate=config.sim.margin_rate)
        merchants.write_text(json.dumps({"merchants": {MERCHANT_ID: catalog}}))
        experiment = {
            "id": f"bench-promo-{arm}",
            "holdout": 0.0,
            "arms": [{"name": arm, "weight": 1, "variant": variant or arm_variant(arm)}],
        }
        self.broker = EmbeddedBroker(log_path=self.dir / "broker.log").start()
        self.port = free_port()
        self.settings = replace(
            Settings.from_env({}),
            broker_url=self.broker.url,
            embedded_broker=True,
            partitions=config.partitions,
            app_id=f"bench-promo-{arm}",
            state_dir=self.dir / "state",
            web_port=self.port,
            merchants_path=merchants,
            policy="promotion",
            promo_experiment=json.dumps(experiment),
            **(settings or {}),
        )
        self.process: subprocess.Popen[bytes] | None = None
        try:
            ensure_topics(self.settings)
            self.process = start_worker(
                self.settings,
                self.dir / "worker.log",
                ("agents.tools.promo_kafka_loop", "worker", str(signals_path)),
            )
            wait_for_port("127.0.0.1", self.port, 90)
        except BaseException:
            if self.process is not None:
                stop_worker(self.process)
            self.broker.stop()
            raise
        self.producer = Producer({**producer_config(self.settings), "log.connection.close": False})
        self.sent = 0
        self.decisions: dict[str, dict] = {}  # cart event id -> decision record
        self.reader = self.topic_reader("decisions")

    def topic_reader(self, kind: str) -> Consumer:
        """A consumer of an output topic from its beginning (assigned, no group)."""
        topic = getattr(self.settings.topics, kind)
        consumer = Consumer(
            {
                **self.settings.kafka_client_config(),
                "group.id": f"bench-promo-{kind}",
                "enable.auto.commit": False,
            }
        )
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        return consumer

    def send(self, kind: str, event: dict) -> None:
        key = f"{event['merchant_id']}:c:{event['customer_id']}".encode()
        topic = getattr(self.settings.topics, kind)
        self.producer.produce(topic, key=key, value=orjson.dumps(event))
        self.producer.poll(0)
        self.sent += 1

    def settle(self) -> None:
        """Flush and wait until the worker has handled everything produced so far."""
        self.producer.flush(30)
        deadline = time.monotonic() + self.config.timeout_s
        while True:
            totals = scrape(self.port, PROCESSED)
            if totals.get("nextbest_dead_letters_total", 0) > 0:
                raise RuntimeError(f"the worker dead-lettered events: see {self.dir}")
            if sum(totals.get(name, 0) for name in PROCESSED) >= self.sent:
                return
            self._alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.arm}: the worker handled {totals} of {self.sent}")
            time.sleep(0.05)

    def decisions_for(self, cart_ids: Sequence[str]) -> list[dict]:
        """The worker's decision records of these carts (waits for them)."""
        deadline = time.monotonic() + self.config.timeout_s
        while any(c not in self.decisions for c in cart_ids):
            for message in self.reader.consume(1000, 0.1):
                if not message.error():
                    record = orjson.loads(message.value())
                    self.decisions.setdefault(record["cart_event_id"], record)
            self._alive()
            if time.monotonic() > deadline:
                missing = sum(c not in self.decisions for c in cart_ids)
                raise TimeoutError(f"{self.arm}: no decision for {missing} carts")
        return [self.decisions[c] for c in cart_ids]

    def read_all(self, kind: str, min_count: int) -> list[dict]:
        """Every record of an output topic: at least ``min_count``, then until quiet."""
        consumer = self.topic_reader(kind)
        records: list[dict] = []
        deadline = time.monotonic() + self.config.timeout_s
        quiet = 0
        while time.monotonic() < deadline and (len(records) < min_count or quiet < 10):
            batch = [m for m in consumer.consume(1000, 0.2) if not m.error()]
            records += [orjson.loads(m.value()) for m in batch]
            quiet = 0 if batch else quiet + 1
        consumer.close()
        return records

    def _alive(self) -> None:
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError(f"{self.arm}: the worker exited; see {self.dir / 'worker.log'}")

    def stop_worker(self) -> None:
        if self.process is not None:
            stop_worker(self.process)

    def close(self) -> None:
        self.stop_worker()
        self.reader.close()
        self.producer.flush(5)
        self.broker.stop()


def _event(kind: str, event_id: str, customer: str, ts: float, **fields: object) -> dict:
    return {
        "schema_version": 1,
        "event_id": event_id,
        "event_type": kind,
        "merchant_id": MERCHANT_ID,
        "event_time": iso(ts),
        "customer_id": customer,
        **fields,
    }


def order_event(
    event_id: str, order_id: str, customer: str, ts: float, lines: list[dict], total: float
) -> dict:
    """An order of the simulated shop (GBP) as a producer sends it."""
    return _event(
        "order", event_id, customer, ts, order_id=order_id, lines=lines, total=total, currency="GBP"
    )


def _wire(event: dict, customer: str) -> dict:
    """An offline simulator event (``_ts``) as the JSON a producer sends."""
    fields = {k: v for k, v in event.items() if k not in ("_ts", "event_id", "event_type")}
    return _event(event["event_type"], event["event_id"], customer, event["_ts"], **fields)


def _action_of(
    record: dict, merchant: Merchant, sim: Simulator, i: int, week: int, cart: dict
) -> tuple[Action, list[Action]]:
    """The decided action and the allowed ones, rebuilt from the record and the cart."""
    signals = sim.signals(i, week)
    coupon = CouponCandidate(
        signals.coupon_product_id, signals.coupon_probability, signals.coupon_price
    )
    actions = candidate_actions(
        merchant,
        cart["cart_value"],
        "GBP",
        cart["_ts"],
        coupon,
        frozenset(line["product_id"] for line in cart["lines"]),
    )
    by_id = {a.id: a for a in actions}
    options = [by_id[o["action"]] for o in record["options"]]
    for action, logged in zip(options, record["options"], strict=True):
        if abs(action.discount - logged["discount"]) > 0.01:
            raise RuntimeError(f"decision {record['decision_id']}: {action.id} differs")
    return by_id[record["action"]], options


def run_arm(config: LoopConfig, population: Population, arm: str, signals_path: Path) -> ArmRun:
    """``config.sim.weeks`` weeks of the population under one arm, through the worker."""
    started = time.perf_counter()
    sim_config = config.sim
    merchant = sim_merchant(MERCHANT_ID, margin_rate=sim_config.margin_rate)
    sim = Simulator(population, sim_config, merchant)
    n = len(population.keys)
    result = RunResult(arm, np.zeros(n), np.zeros(sim_config.weeks), np.zeros(n, dtype=bool))
    decided: set[int] = set()
    loop = WorkerLoop(config, arm, signals_path)
    try:
        send_history(loop, population)
        slice_s = config.slice_hours * 3600.0
        for week in range(sim_config.weeks):
            customers = [i for i in range(n) if sim.has_cart(i, week)]
            redeemed_depth = np.zeros(n)
            for batch in week_slices(sim, week, customers, slice_s):
                events, records = decide_carts(loop, population, week, batch)
                for event, (ts, i), record in zip(events, batch, records, strict=True):
                    decided.add(i)
                    redeemed_depth[i] = _respond(
                        loop,
                        sim,
                        result,
                        merchant,
                        i,
                        week,
                        ts,
                        event,
                        record,
                        keep_truth=arm == LEARNED,
                    )
                loop.settle()
            sim.end_week(redeemed_depth)
        end = sim.week_start(sim_config.weeks) + 60 * 86400.0
        for i in sorted(decided):
            customer = population.keys[i]
            loop.send(
                "clickstream", _event("page_view", f"end-{customer}", customer, end, page="/")
            )
        loop.settle()
        decisions = list(loop.decisions.values())
        rewards = _dedupe(loop.read_all("rewards", len(decisions)))
        offers = loop.read_all("promotions", 0)
        loop.stop_worker()
        checkpoint = loop.dir / "state" / "promo-bandit.json"
        updates = None
        if arm == LEARNED and checkpoint.exists():
            state = json.loads(checkpoint.read_text())
            updates = sum(m.get("updates", 0) for m in state.get("bandit", {}).values())
    finally:
        loop.close()
    result.records = decisions
    result.rewards = rewards
    result.reward_profit = float(sum(r["profit"] for r in rewards))
    return ArmRun(
        arm,
        result,
        decisions,
        rewards,
        len({o["offer_id"] for o in offers}),
        updates,
        checkpoint if arm == LEARNED else None,
        loop.sent,
        round(time.perf_counter() - started, 1),
    )


def week_slices(
    sim: Simulator, week: int, customers: Sequence[int], slice_s: float
) -> list[list[tuple[float, int]]]:
    """The carts of ``customers`` in ``week`` as (event time, customer index), in slices of
    ``slice_s`` seconds of event time, each in time order."""
    start = sim.week_start(week)
    slices: dict[int, list[tuple[float, int]]] = {}
    for i in customers:
        ts = start + float(sim.pop.cart_time[i, week])
        slices.setdefault(int((ts - start) // slice_s), []).append((ts, i))
    return [sorted(batch) for _, batch in sorted(slices.items())]


def decide_carts(
    loop: WorkerLoop, population: Population, week: int, batch: Sequence[tuple[float, int]]
) -> tuple[list[dict], list[dict]]:
    """A slice's product views, then its carts, through the worker: the cart events and the
    worker's decision record of each."""
    events = []
    for ts, i in batch:
        customer = population.keys[i]
        key = f"{MERCHANT_ID}:c:{customer}"
        for view in _views(key, week, ts, int(population.views[i, week])):
            loop.send("clickstream", _wire(view, customer))
        events.append(_cart_event(key, week, ts, float(population.cart_value[i, week])))
    loop.settle()
    for event, (_, i) in zip(events, batch, strict=True):
        loop.send("cart", _wire(event, population.keys[i]))
    records = loop.decisions_for([e["event_id"] for e in events])
    loop.settle()
    return events, records


def send_history(loop: WorkerLoop, population: Population) -> None:
    """The customers' past orders (a year at their real rate), then wait for the worker."""
    for i, customer in enumerate(population.keys):
        for k, (ts, total) in enumerate(population.history[i]):
            line = {"product_id": "PAST", "quantity": 1, "unit_price": total}
            loop.send("orders", order_event(f"h{i}-{k}", f"h{i}-{k}", customer, ts, [line], total))
    loop.settle()


def _dedupe(records: list[dict]) -> list[dict]:
    seen: dict[str, dict] = {}
    for record in records:
        seen.setdefault(record["decision_id"], record)
    return list(seen.values())


def _respond(
    loop: WorkerLoop,
    sim: Simulator,
    result: RunResult,
    merchant: Merchant,
    i: int,
    week: int,
    ts: float,
    cart: dict,
    record: dict,
    keep_truth: bool,
) -> float:
    """The customer's response to the worker's decision, produced back; the simulator's
    accounting as in ``models.promotion.simulation._play``. Returns a redeemed discount's depth."""
    action, options = _action_of(record, merchant, sim, i, week, cart)
    result.decisions += 1
    if keep_truth:
        result.truth[record["decision_id"]] = {
            a.id: sim.expected_profit(i, week, a, future_loss=False) for a in options
        }
    sent = bool(record["sent"])
    outcome = sim.respond(i, week, action if sent else no_offer(cart["cart_value"]))
    result.profit[i] += outcome.profit
    result.future_loss += outcome.future_loss
    result.weekly[week] += outcome.profit
    customer = sim.pop.keys[i]
    key = f"{merchant.id}:c:{customer}"
    if sent:
        result.offers[action.kind] += 1
        result.deep[i] |= action.is_deep(DEEP)
        opened = bool(outcome.redeemed or sim.pop.u_open[i, week] < sim.config.open_rate)
        kinds = (
            ["offer_delivered"] + ["offer_opened"] * opened + ["offer_redeemed"] * outcome.redeemed
        )
        for k, kind in enumerate(kinds):
            loop.send(
                "feedback",
                _event(
                    kind,
                    f"{key}-w{week}-{kind}",
                    customer,
                    ts + 60.0 * (k + 1),
                    offer_id=record["offer_id"],
                ),
            )
    if outcome.purchased:
        lines = [dict(line) for line in cart["lines"]]
        if outcome.redeemed and action.kind == "product_coupon":
            price = round(action.basket - action.cart_value, 2)
            lines.append({"product_id": action.product_id, "quantity": 1, "unit_price": price})
        order = order_event(
            f"{key}-w{week}-order", f"{key}-w{week}", customer, ts + 3600.0, lines, outcome.paid
        )
        loop.send("orders", order)
    end_kind = "checkout" if outcome.purchased else "cart_clear"
    loop.send(
        "cart",
        _event(
            end_kind,
            f"{key}-w{week}-end",
            customer,
            ts + 3600.0 * (1 if outcome.purchased else 24),
            lines=[],
            cart_value=0.0,
            currency="GBP",
        ),
    )
    return outcome.depth if outcome.redeemed else 0.0


# --- the benchmark -----------------------------------------------------------------------------


def bench(config: LoopConfig, calibration: Calibration | None = None) -> dict:
    """Every arm through the worker (and offline when asked) on one population."""
    calibration = calibration or calibrate()
    population = Population.draw(calibration, config.sim)
    merchant = sim_merchant(MERCHANT_ID, margin_rate=config.sim.margin_rate)
    config.out.mkdir(parents=True, exist_ok=True)
    signals_path = (config.out / "signals.json").resolve()
    table = _signals_table(Simulator(population, config.sim, merchant), merchant)
    signals_path.write_text(json.dumps(table))
    n = config.sim.customers
    runs: dict[str, ArmRun] = {}
    for arm in config.arms:
        runs[arm] = run_arm(config, population, arm, signals_path)
        run = runs[arm]
        print(
            f"{arm:<28} through the worker: {run.result.profit.sum() / n:+8.2f} profit/customer, "
            f"{len(run.decisions)} decisions, {len(run.rewards)} rewards, "
            f"{run.events_sent} events, {run.seconds} s",
            flush=True,
        )
    offline = {}
    if config.offline:
        for arm in config.arms:
            offline[arm] = run_policy(calibration, config.sim, arm_variant(arm))
    summary = _summary(config, runs, offline)
    if LEARNED in runs:
        summary["ope"] = _ope(config, runs[LEARNED])
        summary["ope_coverage"] = {
            m: f"{sum(row[m]['covers'] for row in summary['ope'])}/{len(summary['ope'])}"
            for m in ope.METHODS
        }
    summary["config"] = {
        **asdict(config.sim),
        "arms": list(config.arms),
        "partitions": config.partitions,
        "slice_hours": config.slice_hours,
    }
    summary["calibration"] = calibration.sources
    return summary


def _summary(config: LoopConfig, runs: dict[str, ArmRun], offline: dict[str, RunResult]) -> dict:
    n = config.sim.customers
    base = runs[NONE].result.profit.sum() if NONE in runs else None
    arms = {}
    for arm, run in runs.items():
        learnable = [r for r in run.rewards if r.get("reason") == "window_closed"]
        figures = {
            "profit_per_customer": float(run.result.profit.sum() / n),
            "incremental_per_customer": (
                float((run.result.profit.sum() - base) / n) if base is not None else None
            ),
            "deep_discount_customers": int(run.result.deep.sum()),
            "deep_discount_share": float(run.result.deep.mean()),
            "decisions": len(run.decisions),
            "offers_sent": dict(run.result.offers),
            "offers_emitted": run.offers_emitted,
            "rewards": len(run.rewards),
            "rewards_window_closed": len(learnable),
            "reward_join_profit": run.result.reward_profit,
            "simulated_profit": float(run.result.profit.sum()),
            "coupon_future_loss": run.result.future_loss,
            "bandit_updates": run.bandit_updates,
            "events_sent": run.events_sent,
            "seconds": run.seconds,
        }
        if arm in offline:
            off = offline[arm]
            figures["offline_profit_per_customer"] = float(off.profit.sum() / n)
            figures["offline_deep_discount_customers"] = int(off.deep.sum())
            figures["offline_decisions"] = off.decisions
        arms[arm] = figures
    summary: dict = {"arms": arms}
    statics = [a for a in runs if a in STATIC]
    if base is None or not statics:
        return summary
    inc = {a: arms[a]["incremental_per_customer"] for a in runs}
    best = max(statics, key=lambda a: inc[a])
    summary["best_static"] = best
    if LEARNED in runs:
        learned = inc[LEARNED]
        summary["ratio_learned_vs_best_static"] = learned / inc[best] if inc[best] > 0 else None
        summary["bar_best_static"] = bool(inc[best] > 0 and learned >= 1.2 * inc[best])
        summary["bar_deep"] = bool(
            arms[LEARNED]["deep_discount_customers"] < arms[best]["deep_discount_customers"]
        )
        if ALWAYS_20 in runs:
            always = inc[ALWAYS_20]
            summary["ratio_learned_vs_always_20"] = learned / always if always > 0 else None
            summary["bar_always_20"] = bool(learned >= 1.5 * always)
    return summary


def _ope(config: LoopConfig, run: ArmRun) -> list[dict]:
    """``nextbest ope``'s estimators on the log the worker wrote, against the simulator's truth."""
    log = config.out / "learned-log.jsonl"
    with open(log, "w") as f:
        for record in run.decisions + run.rewards:
            f.write(json.dumps(record) + "\n")
    decisions, reward_records = ope.read_log([log])
    run.result.records, run.result.rewards = decisions, reward_records
    candidates = {NONE: ope.static(NONE)}
    candidates.update({name: ope.static(name) for name in STATIC})
    if run.checkpoint is not None and run.checkpoint.exists():
        candidates["greedy-final"] = ope.candidate(f"greedy:{run.checkpoint}")
    return ope_check(run.result, candidates)


def print_summary(summary: dict) -> None:
    config = summary["config"]
    arms = summary["arms"]
    print(
        f"\nThrough the worker and the embedded broker: {config['customers']} customers, "
        f"{config['weeks']} weeks, seed {config['seed']}, {config['partitions']} partitions, "
        f"slices of {config['slice_hours']:g} h. Profit per customer over the run (GBP)."
    )
    header = (
        f"{'arm':<28} {'incremental':>11} {'profit':>9} {'deep share':>10} {'decisions':>9} "
        f"{'rewards':>8} {'offline profit':>14}"
    )
    print(header)
    for arm, a in arms.items():
        inc = a["incremental_per_customer"]
        offline = a.get("offline_profit_per_customer")
        print(
            f"{arm:<28} {inc if inc is not None else float('nan'):>+11.2f} "
            f"{a['profit_per_customer']:>9.2f} {a['deep_discount_share']:>10.1%} "
            f"{a['decisions']:>9} {a['rewards']:>8} "
            f"{offline if offline is not None else float('nan'):>14.2f}"
        )
    if "best_static" in summary and LEARNED in arms:
        best = summary["best_static"]
        ratio = summary.get("ratio_learned_vs_best_static")
        print(f"\nbest static offer: {best}")
        print(
            f"learned / best static = {'n/a' if ratio is None else f'{ratio:.2f}'} "
            f"(bar >= 1.2: {'met' if summary['bar_best_static'] else 'NOT met'})"
        )
        if "bar_always_20" in summary:
            r20 = summary["ratio_learned_vs_always_20"]
            always = arms[ALWAYS_20]["incremental_per_customer"]
            print(
                f"learned / always 20% = {'n/a' if r20 is None else f'{r20:.2f}'} (always 20% "
                f"{always:+.2f} per customer; bar learned >= 1.5 x always 20%: "
                f"{'met' if summary['bar_always_20'] else 'NOT met'})"
            )
        print(
            f"deep-discounted customers: learned {arms[LEARNED]['deep_discount_customers']} vs "
            f"best static {arms[best]['deep_discount_customers']} "
            f"(bar: fewer: {'met' if summary['bar_deep'] else 'NOT met'})"
        )
    if LEARNED in arms:
        a = arms[LEARNED]
        print(
            f"learned arm: {a['decisions']} decisions, {a['rewards']} rewards joined "
            f"({a['rewards_window_closed']} closed windows), bandit updates in the worker's "
            f"checkpoint: {a['bandit_updates']}"
        )
    if "ope" in summary:
        print(
            "\nOff-policy evaluation from the learned arm's decision log (the worker's decisions "
            "and rewards topics): estimate [95% CI] vs the simulator's true value, per decision"
        )
        print_ope_rows(summary["ope"])
        coverage = ", ".join(f"{m} {c}" for m, c in summary["ope_coverage"].items())
        print(f"true value inside the 95% CI: {coverage}")


def bench_seeds(config: LoopConfig, seeds: Sequence[int]) -> dict:
    """`bench` for each seed (its own population, in ``<out>/seed-<n>``), and the means."""
    calibration = calibrate()
    runs = []
    for seed in seeds:
        seed_config = replace(
            config, sim=replace(config.sim, seed=seed), out=config.out / f"seed-{seed}"
        )
        runs.append(bench(seed_config, calibration))
        print_summary(runs[-1])
        (seed_config.out / "summary.json").write_text(json.dumps(runs[-1], indent=2) + "\n")
    return {**_mean(runs), "seeds": runs}


def _mean(runs: list[dict]) -> dict:
    """The arms' figures averaged over seeds, the bars on the means, OPE coverage over all."""
    first = runs[0]["arms"]
    arms = [a for a in first if first[a]["incremental_per_customer"] is not None]
    if not arms:
        return {}

    def mean_of(name: str) -> dict[str, float]:
        return {a: float(np.mean([r["arms"][a][name] for r in runs])) for a in arms}

    inc, deep = mean_of("incremental_per_customer"), mean_of("deep_discount_customers")
    mean: dict = {"mean_incremental_per_customer": inc, "mean_deep_discount_customers": deep}
    statics = [a for a in arms if a in STATIC]
    if statics and LEARNED in arms:
        best = max(statics, key=lambda a: inc[a])
        mean["best_static"] = best
        mean["ratio_learned_vs_best_static"] = inc[LEARNED] / inc[best] if inc[best] > 0 else None
        mean["bar_best_static"] = bool(inc[best] > 0 and inc[LEARNED] >= 1.2 * inc[best])
        mean["bar_deep"] = bool(deep[LEARNED] < deep[best])
        if ALWAYS_20 in arms:
            always = inc[ALWAYS_20]
            mean["ratio_learned_vs_always_20"] = inc[LEARNED] / always if always > 0 else None
            mean["bar_always_20"] = bool(inc[LEARNED] >= 1.5 * always)
    if all("ope" in r for r in runs):
        mean["ope_coverage"] = {
            m: f"{sum(row[m]['covers'] for r in runs for row in r['ope'])}/"
            f"{sum(len(r['ope']) for r in runs)}"
            for m in ope.METHODS
        }
    return mean


def print_means(summary: dict) -> None:
    runs = summary["seeds"]
    inc = summary.get("mean_incremental_per_customer")
    if not inc or len(runs) < 2:
        return
    seeds = [r["config"]["seed"] for r in runs]
    print(f"\nMeans over seeds {seeds}: incremental profit per customer (GBP), deep-discounted")
    for arm, value in inc.items():
        per_seed = ", ".join(f"{r['arms'][arm]['incremental_per_customer']:+.2f}" for r in runs)
        deep = summary["mean_deep_discount_customers"][arm]
        print(f"{arm:<28} {value:>+8.2f} {deep:>8.0f}   ({per_seed})")
    if "best_static" in summary:
        ratio = summary["ratio_learned_vs_best_static"]
        print(
            f"best static {summary['best_static']}; learned / best static = "
            f"{'n/a' if ratio is None else f'{ratio:.2f}'} (bar >= 1.2: "
            f"{'met' if summary['bar_best_static'] else 'NOT met'}); deep: "
            f"{'met' if summary['bar_deep'] else 'NOT met'}"
        )
        if "bar_always_20" in summary:
            r20 = summary["ratio_learned_vs_always_20"]
            print(
                f"learned / always 20% = {'n/a' if r20 is None else f'{r20:.2f}'} (always 20% "
                f"{inc[ALWAYS_20]:+.2f}; bar learned >= 1.5 x always 20%: "
                f"{'met' if summary['bar_always_20'] else 'NOT met'})"
            )
    if "ope_coverage" in summary:
        coverage = ", ".join(f"{m} {c}" for m, c in summary["ope_coverage"].items())
        print(f"OPE: true value inside the 95% CI, all seeds: {coverage}")


def loop_arguments(prog: str, doc: str | None, weeks: int, out: str) -> argparse.ArgumentParser:
    """The command line of a benchmark through the worker: population, seeds, partitions,
    slices, output folder."""
    parser = argparse.ArgumentParser(
        prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--weeks", type=int, default=weeks)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--slice-hours", type=float, default=24.0)
    parser.add_argument("--out", type=Path, default=Path(out))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:  # the worker process the benchmark starts
        serve(Path(argv[1]))
        return 0
    parser = loop_arguments("nextbest bench-promo", __doc__, weeks=10, out="var/bench-promo")
    parser.add_argument("--margin", type=float, default=SimConfig.margin_rate)
    parser.add_argument(
        "--arms",
        nargs="+",
        default=[NONE, *STATIC, LEARNED],
        help=f"arms to run (default all): none, learned, {', '.join(STATIC)}",
    )
    parser.add_argument("--no-offline", action="store_true", help="skip the offline parity runs")
    args = parser.parse_args(argv)
    for arm in args.arms:
        arm_variant(arm)
    config = LoopConfig(
        sim=SimConfig(customers=args.customers, weeks=args.weeks, margin_rate=args.margin),
        arms=tuple(args.arms),
        out=args.out,
        partitions=args.partitions,
        slice_hours=args.slice_hours,
        offline=not args.no_offline,
    )
    summary = bench_seeds(config, args.seeds)
    print_means(summary)
    (config.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nwrote {config.out / 'summary.json'} (every figure) and the runs' logs under it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
