"""``nextbest demo``: embedded broker, a worker process running the promotion policy (learned
bandit, next-purchase model, holdout) and a replay of real shop data, with a live tail of
decisions, offers, notifications and dead letters, then a summary. The customers' responses to
offers are simulated (`agents.tools.demo_responses`), as the e-mail opens are; the orders are
the data's. Cleans up after itself; the summary (JSON), a PNG of the profit over time per arm
and the decision log stay in ``DemoConfig.out`` (var/demo/)."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
import urllib.request
import zlib
from collections import Counter
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

import orjson
from confluent_kafka import Consumer
from tqdm import tqdm

from agents.runtime.settings import Settings
from agents.runtime.topics import ensure_topics
from agents.tools.broker import EmbeddedBroker, free_port, wait_for_port
from agents.tools.demo_engagement import actions_line, count_actions
from agents.tools.demo_model import model_line
from agents.tools.demo_promotion import (
    DEMO_MERCHANT,
    BanditMirror,
    budgets,
    decision_line,
    learned_per_action,
    money,
    plot_profit,
    summary_lines,
    write_merchants,
)
from agents.tools.demo_responses import Responses, counterfactual, plan
from agents.tools.processes import (
    histogram_quantile,
    scrape,
    scrape_buckets,
    scrape_samples,
    start_worker,
    stop_worker,
)
from agents.tools.replay import EventBuilder, ReplayEvent, replay_events, send
from models.promotion.simulator import conversion_lift
from schemas.keys import iso
from schemas.records import SCHEMA_VERSION
from streams.merchants.catalog import Merchant, load_merchants
from streams.promotion.objective import ObjectiveConfig

BAD_INPUTS = [  # shown in the demo: each lands in the dead-letter topic with its reason
    ("cart", b"uci-gift-shop:c:1", b"{not json"),
    (
        "cart",
        b"uci-gift-shop:c:1",
        orjson.dumps(
            {
                "schema_version": 1,
                "event_id": "demo-bad-1",
                "event_type": "cart_add",
                "merchant_id": "no-such-shop",
                "customer_id": "1",
                "event_time": "2011-11-14T09:00:00Z",
                "lines": [],
                "cart_value": 0.0,
                "currency": "GBP",
            }
        ),
    ),
    (
        "clickstream",
        b"uci-gift-shop:c:1",
        orjson.dumps(
            {
                "schema_version": 1,
                "event_id": "demo-bad-2",
                "event_type": "product_view",
                "merchant_id": "uci-gift-shop",
                "customer_id": "1",
                "event_time": "2011-11-14T09:00:00Z",
            }
        ),
    ),
]


@dataclass(frozen=True)
class DemoConfig:
    file: Path
    days: float = 1.0
    speedup: float = 1800.0
    start: datetime = datetime(2011, 11, 14)
    abandon_share: float = 0.1  # customers' visits replayed as abandoned carts (journeys)
    open_share: float = 0.5  # follow-up e-mails the simulated customers open
    model: Path | None = Path("var/models/next_purchase")  # None: no next-purchase model
    out: Path = Path("var/demo")  # summary.json, profit.png, promotion-log.jsonl
    budget: float = 500.0  # discount budget of each promotion of the demo's shop
    offer_ttl_hours: float = 12.0  # offers' validity: the attribution window
    seed: int = 0  # of the simulated customers' responses


ECHO_EVERY_S = 1.0
DECISION_LATENCY_METRIC = "nextbest_decision_latency_seconds"
JOURNEY_STEPS_METRIC = "nextbest_journey_steps_total"


def journey_outcomes(samples: list[tuple[dict[str, str], float]]) -> str:
    """``abandoned_cart: sent 1, suppressed 40 (frequency_cap 38, ...); ...`` from the
    journey-steps counter's samples."""
    outcomes: dict[str, Counter[str]] = {}
    reasons: dict[tuple[str, str], Counter[str]] = {}
    for labels, value in samples:
        if not value:
            continue
        journey, outcome = labels["journey"], labels["outcome"]
        outcomes.setdefault(journey, Counter())[outcome] += int(value)
        if labels.get("reason"):
            reasons.setdefault((journey, outcome), Counter())[labels["reason"]] += int(value)
    parts = []
    for journey in sorted(outcomes):
        shown = []
        for outcome, n in sorted(outcomes[journey].items()):
            why = reasons.get((journey, outcome))
            detail = ", ".join(f"{r} {c:,}" for r, c in why.most_common()) if why else ""
            shown.append(f"{outcome} {n:,}" + (f" ({detail})" if detail else ""))
        parts.append(f"{journey}: " + ", ".join(shown))
    return "; ".join(parts) or "none"


def journey_label(notification: dict) -> str:
    """``offer``, or the journey and its step, e.g. ``follow_up/opened``."""
    source = notification.get("source") or "offer"
    step = notification.get("journey_step")
    return f"{source}/{step}" if step else source


class EmailOpens:
    """Stands in for the e-mail service's open tracking: a share of the follow-up journey's
    e-mails (picked by a hash of the notification id) are opened a few minutes later, in the
    replay's event time, and reported on the offer-feedback topic as a shop's service would."""

    DELAY_S = 300.0

    def __init__(self, settings: Settings, share: float) -> None:
        from confluent_kafka import Producer

        from agents.tools.replay import producer_config

        self.settings = settings
        self.share = share
        self.replay_time = 0.0  # event time of the last replayed event (set by the sender)
        self.producer = Producer(producer_config(settings))
        self.opened = 0

    def on_notification(self, value: dict) -> None:
        if self.producer is None:
            return
        if value.get("source") != "follow_up" or value.get("journey_step") != "first":
            return
        if zlib.crc32(value["notification_id"].encode()) % 1000 >= self.share * 1000:
            return
        feedback = {
            "schema_version": SCHEMA_VERSION,
            "event_id": f"open-{value['notification_id']}",
            "event_type": "offer_opened",
            "merchant_id": value["merchant_id"],
            "customer_id": value["customer_id"],
            "session_id": None,
            "event_time": iso(self.replay_time + self.DELAY_S),
            "offer_id": value["offer_id"],
            "notification_id": value["notification_id"],
        }
        key = f"{value['merchant_id']}:c:{value['customer_id']}".encode()
        self.producer.produce(self.settings.topics.feedback, key=key, value=orjson.dumps(feedback))
        self.producer.poll(0)
        self.opened += 1

    def close(self) -> None:
        if self.producer is not None:
            self.producer.flush(10)
            self.producer = None  # librdkafka clients close when collected


class Tail(threading.Thread):
    """Reads the output topics and prints a readable line per decision / offer / notification /
    DLQ; keeps the decision and reward records and feeds the simulated customers."""

    def __init__(
        self,
        settings: Settings,
        echo: bool = True,
        opens: EmailOpens | None = None,
        responses: Responses | None = None,
        bandit: BanditMirror | None = None,
    ) -> None:
        super().__init__(daemon=True)
        self.opens = opens
        self.responses = responses
        self.bandit = bandit
        t = settings.topics
        self.names = {
            t.promotions: "offer",
            t.notifications: "notify",
            t.dead_letters: "DLQ",
            t.decisions: "decide",
            t.rewards: "reward",
        }
        self.consumer = Consumer(
            {
                **settings.kafka_client_config(),
                "group.id": f"demo-tail-{time.time_ns()}",
                "auto.offset.reset": "earliest",
                "session.timeout.ms": 6000,
            }
        )
        self.consumer.subscribe(list(self.names))
        self.echo = echo
        #: lines per output kind (default 40); decisions: the first few, then one every
        #: `ECHO_EVERY_S` (the bandit's estimates change as it learns)
        self.echo_limit = {"offer": 5}
        self.echoed = 0.0  # time.monotonic() of the last decision line
        self.counts: Counter[str] = Counter()
        self.decisions: dict[str, dict] = {}  # by decision id (the topics are at-least-once)
        self.rewards: dict[str, dict] = {}
        self.last_message = time.monotonic()
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            for message in self.consumer.consume(500, 0.2):
                if message.error():
                    continue
                self.last_message = time.monotonic()
                kind = self.names[message.topic()]
                value = orjson.loads(message.value())
                if kind in ("decide", "reward"):
                    self._promotion(kind, value)
                    continue
                self.counts[self._count_key(kind, value)] += 1
                if self.echo and self._echo(kind, value):
                    tqdm.write(self._line(kind, value))
                self.counts[kind] += 1
                self.counts["model"] += kind == "offer" and bool(value.get("model_version"))
                if kind in ("offer", "notify"):
                    count_actions(self.counts, value)
                self.counts["bought_together"] += kind == "offer" and "bought_together" in (
                    value.get("recommendation_sources") or ()
                )
                if kind == "notify":
                    self.counts[f"source:{journey_label(value)}"] += 1
                    if self.opens is not None:
                        self.opens.on_notification(value)
            if self.responses is not None:
                self.responses.settle()
        self.consumer.close()

    def _promotion(self, kind: str, value: dict) -> None:
        if kind == "reward":
            self.rewards[value["decision_id"]] = value
            if self.bandit is not None:
                self.bandit.learn(value)
            return
        if value.get("repeat_of") is not None:  # a cart event repeating its cart's decision
            self.counts["repeat"] += 1
            return
        self.decisions[value["decision_id"]] = value
        if self.responses is not None:
            self.responses.on_decision(value)
        now = time.monotonic()
        first = self.counts[kind] < 3
        if self.echo and self.bandit is not None and (first or now - self.echoed >= ECHO_EVERY_S):
            self.echoed = now
            tqdm.write(decision_line(value, self.bandit.expected_incremental(value)))
        self.counts[kind] += 1

    def _echo(self, kind: str, value: dict) -> bool:
        """The first lines of each kind, and the first few of every journey step."""
        if kind == "notify" and value.get("journey_step"):
            label = f"echo:{journey_label(value)}"
            self.counts[label] += 1
            return self.counts[label] <= 3
        return self.counts[kind] < self.echo_limit.get(kind, 40)

    @staticmethod
    def _count_key(kind: str, value: dict) -> str:  # noqa: D102
        detail = {"offer": "offer_type", "notify": "channel", "DLQ": "reason"}[kind]
        return f"{kind}:{value[detail]}"

    @staticmethod
    def _line(kind: str, value: dict) -> str:
        if kind == "offer":
            who = value["customer_id"] or f"guest {value['session_id']}"
            return (
                (
                    f"  offer   {who:>14}  cart £{value['cart_value']:>9,.2f}  "
                    f"{value['offer_type']:<15} {value['message']}"
                )
                + model_line(value)
                + actions_line(value)
            )
        if kind == "notify":
            return (
                f"  notify  {value['customer_id']:>14}  {value['channel']:<6} "
                f"[{journey_label(value)}] -> {value['address']}: {value['body']}"
            ) + actions_line(value)
        return f"  DLQ     {value['reason']:<22} {value['error'][:70]}"


def run_demo(config: DemoConfig) -> int:
    if not config.file.exists():
        print(f"data file not found: {config.file} (expected ../shared/data beside the repo)")
        return 2
    model_path = ""
    if config.model is not None:
        from agents.tools.demo_model import prepare_model

        model_path = str(prepare_model(config.model, config.file, config.start) or "")
    workdir = Path(tempfile.mkdtemp(prefix="nextbest-demo-"))
    broker = EmbeddedBroker(log_path=workdir / "broker.log").start()
    merchants = write_merchants(
        workdir / "merchants.yaml", config.file, config.budget, config.offer_ttl_hours
    )
    settings = replace(
        Settings.from_env(),
        broker_url=broker.url,
        embedded_broker=True,
        state_dir=workdir / "state",
        web_port=free_port(),
        app_id="nextbest-demo",
        model_path=model_path,
        policy="promotion",  # the learned policy, whatever NEXTBEST_POLICY says
        merchants_path=merchants,
    )
    merchant = load_merchants(merchants)[DEMO_MERCHANT]
    worker = None
    tail = None
    try:
        ensure_topics(settings)
        print(f"broker: Tansu on {broker.bootstrap}; worker log: {workdir / 'worker.log'}")
        worker = start_worker(settings, workdir / "worker.log")
        wait_for_port("127.0.0.1", settings.web_port, 60)
        end = config.start + timedelta(days=config.days)
        events, sessions, cart_invoice = plan(
            replay_events(config.file, start=config.start, end=end),
            EventBuilder(DEMO_MERCHANT, abandon_share=config.abandon_share),
        )
        opens = EmailOpens(settings, config.open_share)
        responses = Responses(
            settings, merchant, sessions, cart_invoice, conversion_lift(), config.seed
        )
        objective = ObjectiveConfig(
            horizon_weeks=settings.promo_horizon_weeks,
            dependency_cost=settings.promo_dependency_cost,
        )
        tail = Tail(settings, opens=opens, responses=responses, bandit=BanditMirror(objective))
        tail.start()
        history = 0
        if model_path:  # the state gets the order histories the model scores
            from agents.tools.demo_model import send_order_history

            history = send_order_history(settings, config.file, events, settings.web_port)
        print(
            f"replaying {len(events):,} events of {config.start:%Y-%m-%d} + {config.days:g} "
            f"day(s) at {config.speedup:g}x, plus {len(BAD_INPUTS)} bad inputs; "
            f"{config.abandon_share:.0%} of customers' visits end with an abandoned cart, "
            f"{config.open_share:.0%} of follow-up e-mails get opened.\n"
            f"Promotion policy: {settings.experiment().holdout:.0%} holdout, the learned bandit "
            f"for the rest; offers valid {config.offer_ttl_hours:g} h (the attribution window), "
            f"a {money(config.budget)} budget per promotion. Customers' responses to offers are "
            "SIMULATED (customer-response simulator); the orders are the data's."
        )
        _send_bad_inputs(settings)
        started = time.monotonic()
        with tqdm(total=len(events), unit="ev", desc="replay", position=0) as bar:

            def sent(event: ReplayEvent) -> None:
                bar.update()
                opens.replay_time = event.ts
                responses.on_sent(event)

            send(events, settings, speedup=config.speedup, on_sent=sent)
        replayed = history + len(events) + len(BAD_INPUTS)
        _wait_processed(settings.web_port, replayed + opens.opened, timeout=120)
        _wait_quiet(tail, 1.5)  # the last decisions have reached the tail
        responses.settle(everything=True)
        responses.close()
        opens.close()
        expected = replayed + opens.opened + responses.sent
        processed = _wait_processed(settings.web_port, expected, timeout=120) - history
        elapsed = time.monotonic() - started
        _wait_quiet(tail, 1.5)
        latency = {
            q: histogram_quantile(q, scrape_buckets(settings.web_port, DECISION_LATENCY_METRIC))
            for q in (0.5, 0.95, 0.99)
        }
        _summary(
            scrape(settings.web_port),
            tail.counts | {"opened": opens.opened},
            processed,
            elapsed,
            {q: v for q, v in latency.items() if v is not None},
            journey_outcomes(scrape_samples(settings.web_port, JOURNEY_STEPS_METRIC)),
        )
        if model_path:
            from agents.tools.demo_model import model_summary

            offers = sum(v for k, v in tail.counts.items() if k.startswith("offer:"))
            model_summary(
                scrape(settings.web_port),
                offers,
                tail.counts["model"],
                tail.counts["bought_together"],
            )
        promotion_summary(config.out, merchant, tail, responses, worker_updates(settings.web_port))
        return 0
    finally:
        if tail:
            tail.stopping.set()
            tail.join(5)
        if worker:
            stop_worker(worker)
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def worker_updates(port: int) -> int:
    """Rewards the worker's bandit learned, from ``/promo/bandit/``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/promo/bandit/", timeout=5) as response:
        view = orjson.loads(response.read())
    return sum(m["updates"] for merchants in view.values() for m in merchants.values())


def promotion_summary(
    out: Path,
    merchant: Merchant,
    tail: Tail,
    responses: Responses,
    updates: int,
) -> None:
    """The summary's promotion part; writes summary.json, profit.png and the decision log
    (`nextbest report --log`, `nextbest ope`) to ``out``."""
    decisions, rewards = list(tail.decisions.values()), list(tail.rewards.values())
    promotions = {p.id: p.budget for p in (*merchant.promotions, *merchant.product_coupons)}
    lines, figures = summary_lines(
        decisions,
        rewards,
        budgets(promotions, decisions, rewards),
        learned_per_action(tail.bandit.model),
        counterfactual(responses.answered, responses.sessions, merchant, responses.customer),
        responses.outcomes,
    )
    print("\n".join(lines))
    print(
        f"  (bandit: the demo's copy learned {tail.bandit.model.updates:,} rewards, the "
        f"worker's {updates:,}; counterfactuals are expectations under the simulated responses,"
        " guard rails and budgets not applied)"
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_bytes(
        orjson.dumps(figures, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
    )
    with open(out / "promotion-log.jsonl", "wb") as log:
        for record in (*decisions, *rewards):
            log.write(orjson.dumps(record) + b"\n")
    plot_profit(rewards, out / "profit.png")
    print(
        f"  wrote {out / 'profit.png'} (profit over time per arm), {out / 'summary.json'}, "
        f"{out / 'promotion-log.jsonl'} (`nextbest report --log` it)"
    )


def _wait_quiet(tail: Tail, quiet_s: float, timeout: float = 30.0) -> None:
    """Until the tail has read nothing for ``quiet_s`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and time.monotonic() - tail.last_message < quiet_s:
        time.sleep(0.2)


def _send_bad_inputs(settings: Settings) -> None:
    from confluent_kafka import Producer

    producer = Producer(settings.kafka_client_config())
    for kind, key, value in BAD_INPUTS:
        producer.produce(getattr(settings.topics, kind), key=key, value=value)
    producer.flush(10)


def _processed(totals: dict[str, float]) -> float:
    return (
        totals.get("nextbest_events_total", 0)
        + totals.get("nextbest_dead_letters_total", 0)
        + totals.get("nextbest_rerouted_events_total", 0)
    )


def _wait_processed(port: int, expected: int, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    processed = 0.0
    while time.monotonic() < deadline:
        processed = _processed(scrape(port))
        if processed >= expected:
            break
        time.sleep(0.5)
    return processed


def _summary(
    totals: dict[str, float],
    counts: Counter[str],
    processed: float,
    elapsed: float,
    latency: dict[float, float],
    journeys: str = "none",
) -> None:
    def group(prefix: str) -> str:
        items = sorted((k.split(":", 1)[1], v) for k, v in counts.items() if k.startswith(prefix))
        return ", ".join(f"{name} {n:,}" for name, n in items) or "none"

    print("\nsummary")
    print(
        f"  events processed   {processed:,.0f} in {elapsed:.1f}s "
        f"({processed / max(elapsed, 1e-9):,.0f}/s, paced by the replay speed-up)"
    )
    print(
        f"  offers             {sum(v for k, v in counts.items() if k.startswith('offer:')):,}"
        f" ({group('offer:')})"
    )
    print(
        f"  notifications      {sum(v for k, v in counts.items() if k.startswith('notify:')):,}"
        f" ({group('notify:')})"
    )
    print(f"  by source          {group('source:')}")
    print(
        f"  engagement actions first-ranked: {group('action:')}; "
        f"{counts['with_actions']:,} offers carried them, "
        f"{counts['offer:engagement_action']:,} carts got an action alone, "
        f"{counts['messages_with_actions']:,} journey messages carried them"
    )
    print(f"  journey steps      {journeys}")
    print(f"  e-mails opened     {counts['opened']:,} (simulated open tracking, follow-up e-mails)")
    print(
        f"  suppressed         {totals.get('nextbest_messages_suppressed_total', 0):,.0f}"
        " (frequency cap, consent, opt-out, duplicate)"
    )
    print(
        f"  dead letters       {sum(v for k, v in counts.items() if k.startswith('DLQ:')):,}"
        f" ({group('DLQ:')})"
    )
    if latency:
        print(
            "  decision latency   "
            + ", ".join(f"p{round(q * 100)} {latency[q] * 1000:,.0f} ms" for q in sorted(latency))
            + " (cart record to offer, estimated from the histogram on /metrics)"
        )
