"""``nextbest catalog validate|push``: check merchant configs, publish them on the catalog topic.

``validate FILE`` checks a merchants file (``{merchants: {<id>: <config>}}``, YAML or JSON) or a
single catalog record (one merchant's config as JSON; its merchant id is ``--merchant`` or the
file name without extension) and prints OK or one line per error with its field path; exit
status 1 when there are errors. ``push FILE`` validates the same way, publishes nothing if
anything is wrong, else produces each merchant's record to the compacted promotion-catalog topic
keyed by merchant id; ``push --delete MERCHANT`` produces a tombstone (the workers drop the
merchant). Broker and topic names come from the ``NEXTBEST_*`` settings.

This module also writes (and checks) ``schemas/json/catalog.v1.json``, the JSON Schema of a
catalog record, from the same model the workers validate with (`nextbest schemas`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson
from confluent_kafka import KafkaError, Message, Producer

from agents.runtime.settings import Settings
from agents.tools.replay import producer_config
from schemas.json_schema import JSON_DIR, render
from streams.merchants.catalog import (
    CatalogError,
    MerchantConfig,
    catalog_record_schema,
    merchant_configs,
    read_document,
    validate_merchants,
)

CATALOG_SCHEMA = JSON_DIR / "catalog.v1.json"


def write_catalog_schema() -> Path:
    CATALOG_SCHEMA.write_text(render(catalog_record_schema()))
    return CATALOG_SCHEMA


def stale_catalog_schema() -> list[str]:
    """``[catalog.v1.json]`` when the committed file differs from the model's schema, else []."""
    current = CATALOG_SCHEMA.exists() and CATALOG_SCHEMA.read_text() == render(
        catalog_record_schema()
    )
    return [] if current else [CATALOG_SCHEMA.name]


def read_catalog(path: Path, merchant_id: str | None = None) -> dict[str, MerchantConfig]:
    """The validated merchants of a merchants file, or of a single catalog record (merchant id:
    ``merchant_id`` or the file's stem). Raises CatalogError naming every bad field."""
    document = read_document(path)
    if isinstance(document, dict) and "merchants" in document:
        return validate_merchants(merchant_configs(document, path))
    return validate_merchants({merchant_id or path.stem: document})


def catalog_records(merchants: dict[str, MerchantConfig]) -> dict[str, bytes]:
    """Merchant id -> the catalog record's value: the config as given (defaults left out),
    normalised to JSON (times in ISO 8601, numbers as numbers)."""
    return {
        mid: orjson.dumps(config.model_dump(mode="json", exclude_unset=True))
        for mid, config in merchants.items()
    }


def produce(settings: Settings, records: dict[str, bytes | None]) -> list[str]:
    """Produce ``records`` (merchant id -> value, None: a tombstone) to the catalog topic;
    returns the delivery errors."""
    errors: list[str] = []

    def delivered(error: KafkaError | None, message: Message) -> None:
        if error is not None:
            errors.append(f"{message.key().decode()}: {error.str()}")

    producer = Producer(producer_config(settings))
    for merchant_id, value in records.items():
        producer.produce(
            settings.topics.catalog, key=merchant_id.encode(), value=value, on_delivery=delivered
        )
    undelivered = producer.flush(30)
    if undelivered:
        errors.append(f"{undelivered} record(s) not delivered in 30 s")
    return errors


def cmd_validate(args: argparse.Namespace) -> int:
    try:
        merchants = read_catalog(args.file, args.merchant)
    except CatalogError as exc:
        for error in exc.errors:
            print(f"{args.file}: {error}", file=sys.stderr)
        return 1
    print(f"OK: {args.file}: {len(merchants)} merchant(s): {', '.join(merchants)}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    if (args.file is None) == (not args.delete):
        print("push: give a FILE or --delete MERCHANT (not both)", file=sys.stderr)
        return 2
    records: dict[str, bytes | None] = dict.fromkeys(args.delete or [])
    if args.file is not None:
        if cmd_validate(args):
            return 1
        records.update(catalog_records(read_catalog(args.file, args.merchant)))
    settings = Settings.from_env()
    errors = produce(settings, records)
    for error in errors:
        print(f"not published: {error}", file=sys.stderr)
    if errors:
        return 1
    for merchant_id, value in records.items():
        action = "deleted" if value is None else "published"
        print(f"{action} {merchant_id} on {settings.topics.catalog}")
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="nextbest catalog",
        description="Check merchant configs; publish them on the promotion-catalog topic.",
    )
    sub = root.add_subparsers(dest="action", required=True)
    merchant_help = "a single record's merchant id (default: the file name without extension)"

    p = sub.add_parser("validate", help="check a merchants file or a catalog record")
    p.add_argument("file", type=Path)
    p.add_argument("--merchant", help=merchant_help)
    p.set_defaults(run=cmd_validate)

    p = sub.add_parser("push", help="validate, then publish on the promotion-catalog topic")
    p.add_argument("file", type=Path, nargs="?")
    p.add_argument("--merchant", help=merchant_help)
    p.add_argument(
        "--delete", action="append", metavar="MERCHANT", help="publish a tombstone (repeatable)"
    )
    p.set_defaults(run=cmd_push)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.run(args)
