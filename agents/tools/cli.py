"""``nextbest`` command line: worker, broker, topics, replay, demo, schemas, bench, ..."""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

DATA_FILE = Path("../shared/data/online_retail.csv.gz")

#: subcommands whose own argparse takes every option after the name: (module, help)
DELEGATED: dict[str, tuple[str, str]] = {
    "train": ("models.next_purchase.train", "train the next-purchase model"),
    "evaluate": (
        "models.next_purchase.evaluate",
        "evaluate the next-purchase model against baselines",
    ),
    "evaluate-churn": (
        "models.churn.evaluate",
        "the churn-risk score against recency alone, offline (time split)",
    ),
    "evaluate-similar": (
        "models.next_purchase.evaluate_similar",
        "bought-together add-ons against popularity and the next-purchase model",
    ),
    "uplift-validate": ("models.promotion.hillstrom", "validate the uplift model on Hillstrom"),
    "report": (
        "agents.tools.report",
        "promotion results per arm, product, country, segment and week (tables, CSV, PNG)",
    ),
    "ope": ("models.promotion.ope", "off-policy evaluation of a promotion policy from the log"),
    "engagement-ope": (
        "models.promotion.engagement_ope",
        "off-policy evaluation of engagement-action rankings from the log",
    ),
    "simulate": ("models.promotion.simulation", "promotion policies vs simulated customers"),
    "bench-promo": ("agents.tools.promo_kafka_loop", "the simulator's loop through the worker"),
    "bench-actions": (
        "agents.tools.actions_kafka_loop",
        "engagement-action ranking and retention, simulated, through the worker",
    ),
    "bench-churn": (
        "agents.tools.bench_churn",
        "what churn risk adds to every event's state update",
    ),
    "bench-similar": ("agents.tools.bench_similar", "bought-together serving cost per cart, call"),
    "promo-retrain": ("models.promotion.log", "rebuild the promotion bandit from the log"),
    "segment": ("agents.tools.segments", "export customers predicted to buy a product next"),
    "import-endpoints": ("agents.tools.pinpoint", "Pinpoint endpoint file -> customer profiles"),
    "import-interactions": (
        "models.next_purchase.interactions",
        "load a Personalize interactions CSV",
    ),
    "catalog": (
        "agents.tools.catalog",
        "validate merchant configs, push them to the catalog topic",
    ),
}


def _settings():  # noqa: ANN202 - imported lazily so `nextbest --help` stays fast
    from agents.runtime.settings import Settings

    return Settings.from_env()


def cmd_worker(args: argparse.Namespace) -> int:
    from agents.worker import run_worker

    settings = _settings()
    if args.embedded_broker:
        settings = replace(settings, embedded_broker=True)
    run_worker(settings)
    return 0


def cmd_broker(args: argparse.Namespace) -> int:
    from agents.runtime.topics import ensure_topics
    from agents.tools.broker import EmbeddedBroker

    with EmbeddedBroker(port=args.port) as broker:
        settings = replace(_settings(), broker_url=broker.url, embedded_broker=True)
        ensure_topics(settings)
        print(f"embedded Tansu broker on {broker.bootstrap} (memory only); Ctrl-C stops it")
        print(f"  export NEXTBEST_BROKER_URL={broker.url} NEXTBEST_EMBEDDED_BROKER=1")
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            while broker.process and broker.process.poll() is None:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    from agents.runtime.topics import ensure_topics

    created = ensure_topics(_settings())
    print(f"created {len(created)} topic(s): {', '.join(created) or '-'}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from agents.tools.replay import ReadStats, replay_events, send

    stats = ReadStats()
    events = replay_events(
        args.file, args.merchant, args.start, args.end, stats, abandon_share=args.abandon_share
    )
    with tqdm(unit="ev", desc="replay", total=args.limit or None) as bar:
        result = send(
            events,
            _settings(),
            speedup=args.speedup,
            rate=args.rate,
            limit=args.limit,
            on_sent=lambda _: bar.update(),
        )
    print(
        f"sent {result.events} events in {result.seconds:.1f}s "
        f"({result.events / max(result.seconds, 1e-9):,.0f}/s); "
        f"{stats.rows} rows read, {stats.skipped} skipped"
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from agents.tools.demo import DemoConfig, run_demo

    return run_demo(
        DemoConfig(
            file=args.file,
            days=args.days,
            speedup=args.speedup,
            start=args.start,
            model=None if args.no_model else args.model,
            abandon_share=args.abandon_share,
            open_share=args.open_share,
        )
    )


def cmd_schemas(args: argparse.Namespace) -> int:
    from agents.tools.catalog import stale_catalog_schema, write_catalog_schema
    from schemas.json_schema import JSON_DIR, build_schemas, render, write_schemas

    if args.check:
        stale = [
            name
            for name, doc in build_schemas().items()
            if not (JSON_DIR / name).exists() or (JSON_DIR / name).read_text() != render(doc)
        ] + stale_catalog_schema()
        print("JSON Schemas up to date" if not stale else f"stale: {', '.join(stale)}")
        return 1 if stale else 0
    for path in [*write_schemas(), write_catalog_schema()]:
        print(path)
    return 0


def cmd_config_doc(args: argparse.Namespace) -> int:
    from agents.tools.config_doc import CONFIG_DOC, is_current, write

    if args.check:
        current = is_current()
        print(f"{CONFIG_DOC.name} up to date" if current else f"stale: {CONFIG_DOC}")
        return 0 if current else 1
    print(write())
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from agents.tools.bench import BenchConfig, run_bench

    return run_bench(
        BenchConfig(
            events=args.events,
            rate=args.rate,
            file=args.file,
            latency_seconds=args.latency_seconds,
            rounds=args.rounds,
            configs=tuple(name.strip() for name in args.configs.split(",")),
            model=args.model,
        )
    )


def cmd_bench_scale(args: argparse.Namespace) -> int:
    from agents.tools.bench_scale import QUICK_CUSTOMERS, ScaleConfig, run_bench_scale

    return run_bench_scale(
        ScaleConfig(
            file=args.file,
            customers=QUICK_CUSTOMERS if args.quick else tuple(args.customers),
            partitions=args.partitions,
            scenarios=tuple(name.strip() for name in args.scenarios.split(",")),
            standby=(1,) if args.quick else tuple(args.standby),
            probe_rate=args.probe_rate,
            timeout=args.timeout,
            keep_logs=args.keep_logs,
        )
    )


def cmd_bench_model(args: argparse.Namespace) -> int:
    from agents.tools.bench_model import ModelBenchConfig, run_model_bench

    return run_model_bench(
        ModelBenchConfig(
            model=args.model,
            file=args.file,
            cutoff=args.cutoff,
            seconds_per_cell=args.seconds_per_cell,
            compile=args.compile,
            inference=not args.no_inference,
            pipeline=not args.no_pipeline,
            rate=args.rate,
            latency_seconds=args.latency_seconds,
            rounds=args.rounds,
            previous=args.previous,
        )
    )


def _day(value: str) -> datetime:
    return datetime.fromisoformat(value)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="nextbest", description=__doc__)
    sub = root.add_subparsers(dest="command", required=True)

    p = sub.add_parser("worker", help="run the stream worker (settings from NEXTBEST_* env)")
    p.add_argument(
        "--embedded-broker", action="store_true", help="apply the embedded (Tansu) broker settings"
    )
    p.set_defaults(run=cmd_worker)

    p = sub.add_parser("broker", help="run the embedded Tansu broker on loopback")
    p.add_argument("--port", type=int, default=9092)
    p.set_defaults(run=cmd_broker)

    sub.add_parser("topics", help="create nextbest's topics").set_defaults(run=cmd_topics)

    p = sub.add_parser("replay", help="replay a UCI Online Retail file as live events")
    p.add_argument("--file", type=Path, default=DATA_FILE)
    p.add_argument("--merchant", default="uci-gift-shop")
    p.add_argument(
        "--abandon-share",
        type=float,
        default=0.0,
        help="share of customers' invoices replayed as abandoned carts (no checkout/order)",
    )
    p.add_argument("--start", type=_day, help="first invoice time, e.g. 2011-01-01")
    p.add_argument("--end", type=_day, help="invoices before this time")
    p.add_argument(
        "--speedup",
        type=float,
        default=0.0,
        help="event-time compression factor (0: as fast as possible)",
    )
    p.add_argument("--rate", type=float, default=0.0, help="fixed events per second")
    p.add_argument("--limit", type=int, default=0, help="stop after this many events")
    p.set_defaults(run=cmd_replay)

    p = sub.add_parser("demo", help="broker + worker + replay of real data, with a live tail")
    p.add_argument("--file", type=Path, default=DATA_FILE)
    p.add_argument("--start", type=_day, default=datetime(2011, 11, 14, 7))
    p.add_argument(
        "--days",
        type=float,
        default=3.5,
        help="days of data to replay (3.5: long enough for the follow-up's 3-day SMS branch)",
    )
    p.add_argument(
        "--speedup",
        type=float,
        default=5000.0,
        help="event-time compression (5000: an hour of shop traffic in 0.7 s)",
    )
    p.add_argument(
        "--abandon-share",
        type=float,
        default=0.1,
        help="share of customers' visits replayed as abandoned carts (reminders)",
    )
    p.add_argument(
        "--open-share",
        type=float,
        default=0.5,
        help="share of follow-up e-mails the simulated customers open",
    )
    p.add_argument(
        "--model",
        type=Path,
        default=Path("var/models/next_purchase"),
        help="next-purchase artifact root (trained quickly first if it has none)",
    )
    p.add_argument("--no-model", action="store_true", help="threshold rules only")
    p.set_defaults(run=cmd_demo)

    p = sub.add_parser("schemas", help="write (or --check) the JSON Schema files")
    p.add_argument("--check", action="store_true")
    p.set_defaults(run=cmd_schemas)

    p = sub.add_parser(
        "config-doc", help="write (or --check) docs/configuration.md from the settings"
    )
    p.add_argument("--check", action="store_true")
    p.set_defaults(run=cmd_config_doc)

    p = sub.add_parser("bench", help="throughput and latency benchmark on the embedded broker")
    p.add_argument("--events", type=int, default=60000)
    p.add_argument("--rate", type=float, default=1000.0, help="offered rate for latency (ev/s)")
    p.add_argument("--latency-seconds", type=float, default=20.0)
    p.add_argument("--rounds", type=int, default=3, help="interleaved throughput rounds")
    p.add_argument("--file", type=Path, default=DATA_FILE)
    p.add_argument(
        "--configs",
        default="rules,rules+model,promotion,promotion+model",
        help="worker configurations, comma-separated",
    )
    p.add_argument(
        "--model",
        type=Path,
        default=Path("var/models/next_purchase"),
        help="next-purchase model for the +model configurations (trained quickly if none loads)",
    )
    p.set_defaults(run=cmd_bench)

    p = sub.add_parser(
        "bench-scale",
        help="hand-over of partitions (recovery, join, leave, SIGKILL) with N customers' state",
    )
    p.add_argument(
        "--customers", type=int, nargs="+", default=[100_000, 1_000_000], help="sizes to run"
    )
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument(
        "--scenarios",
        default="recovery,join,leave,kill",
        help="comma-separated; every run starts with the first worker's recovery",
    )
    p.add_argument(
        "--standby",
        type=int,
        nargs="+",
        default=[1, 0],
        help="NEXTBEST_STANDBY_REPLICAS of the kill scenario, one run each",
    )
    p.add_argument("--probe-rate", type=float, default=10.0, help="probes per partition per second")
    p.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="seconds a phase may take before it is given up",
    )
    p.add_argument(
        "--quick", action="store_true", help="smoke test: 2,000 customers, the kill with standby 1"
    )
    p.add_argument(
        "--keep-logs", action="store_true", help="keep the logs (else only of a run that failed)"
    )
    p.add_argument("--file", type=Path, default=DATA_FILE)
    p.set_defaults(run=cmd_bench_scale)

    p = sub.add_parser(
        "bench-model", help="next-purchase inference speed and cart->offer latency with the model"
    )
    p.add_argument("--model", type=Path, default=Path("var/models/next_purchase"))
    p.add_argument("--file", type=Path, default=DATA_FILE)
    p.add_argument("--cutoff", default="2011-10-01", help="histories: orders before this date")
    p.add_argument("--seconds-per-cell", type=float, default=0.5)
    p.add_argument("--compile", action="store_true", help="also torch.compile (slow to build)")
    p.add_argument("--no-inference", action="store_true", help="pipeline latency only")
    p.add_argument("--no-pipeline", action="store_true", help="inference figures only")
    p.add_argument("--rate", type=float, default=500.0, help="offered rate for latency (ev/s)")
    p.add_argument("--latency-seconds", type=float, default=15.0)
    p.add_argument("--rounds", type=int, default=2, help="alternating latency rounds")
    p.add_argument(
        "--previous",
        type=Path,
        default=None,
        help="an earlier version's source (a folder with its models/ and streams/): its serving "
        "path gets columns beside this one's",
    )
    p.set_defaults(run=cmd_bench_model)

    for name, (_, text) in DELEGATED.items():  # main() runs them before argparse parses
        p = sub.add_parser(name, help=text, add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
    return root


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv and argv[0] in DELEGATED:  # their own argparse takes every option after the name
            return importlib.import_module(DELEGATED[argv[0]][0]).main(argv[1:])
        args = parser().parse_args(argv)
        return args.run(args)
    except ValueError as exc:
        from agents.runtime.settings import SettingsError  # loaded by now if it raised one

        if not isinstance(exc, SettingsError):
            raise
        print(f"nextbest: {exc}", file=sys.stderr)  # one line naming the variable, no traceback
        return 2


if __name__ == "__main__":
    sys.exit(main())
