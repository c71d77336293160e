"""Amazon Pinpoint endpoint files: read and write them, and turn them into customer profiles.

An endpoint file holds one endpoint (one address on one channel) per row: CSV with a header of
dotted attribute names (``ChannelType,Address,User.UserId,Attributes.Interests,...``) or
newline-delimited JSON with nested objects (``{"ChannelType": "EMAIL", "Address": ...,
"User": {"UserId": ..., "UserAttributes": {"k": ["v"]}}, "Attributes": {"k": ["v"]},
"Metrics": {"k": 1.0}}``), the format of Pinpoint's endpoint import and segment files
(EndpointRequest fields: ChannelType, Address, Id, User, Attributes, Metrics, Demographic,
Location, EffectiveDate, EndpointStatus, OptOut).

`profile_events` groups a file's endpoints by ``User.UserId`` into one ``ProfileEvent`` per
customer: EMAIL -> email, SMS -> sms, the push channels (GCM, APNS, APNS_SANDBOX,
APNS_VOIP, APNS_VOIP_SANDBOX, ADM, BAIDU) -> push, IN_APP -> in-app. An endpoint with
``OptOut: ALL`` or ``EndpointStatus: INACTIVE`` gives no consent on its channel; a customer
whose endpoints are all opted out is opted out. ``Demographic.Timezone`` (a valid IANA name)
becomes the time zone, ``Location.Country`` the country, ``User.UserAttributes.PreferredChannel``
the preferred channel. VOICE and CUSTOM endpoints, and endpoints without a user id, cannot be
used and are counted, not guessed.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson

from agents.runtime.settings import Settings
from schemas.records import SCHEMA_VERSION
from schemas.validation import InvalidEvent, parse_event
from streams.merchants.options import time_zone

PUSH_TYPES = ("GCM", "APNS", "APNS_SANDBOX", "APNS_VOIP", "APNS_VOIP_SANDBOX", "ADM", "BAIDU")
CHANNEL_OF_TYPE = {"EMAIL": "email", "SMS": "sms", "IN_APP": "in_app"} | dict.fromkeys(
    PUSH_TYPES, "push"
)
#: Nested objects whose values are lists of strings (CSV cells hold one value each).
LIST_MAPS = ("Attributes", "User.UserAttributes")


class EndpointFileError(ValueError):
    """A file that is not a Pinpoint endpoint file; the message says where."""


# -- the file format -----------------------------------------------------------------------


def flatten(endpoint: dict, prefix: str = "") -> dict[str, object]:
    """Nested endpoint -> dotted columns; a list value (attributes) is joined with commas."""
    flat: dict[str, object] = {}
    for name, value in endpoint.items():
        column = f"{prefix}{name}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{column}."))
        elif isinstance(value, list):
            flat[column] = ",".join(str(v) for v in value)
        else:
            flat[column] = value
    return flat


def unflatten(row: dict[str, str]) -> dict:
    """Dotted CSV columns -> a nested endpoint; empty cells are left out."""
    endpoint: dict = {}
    for column, value in row.items():
        if column is None or value is None or value == "":
            continue
        *parents, name = column.strip().split(".")
        node = endpoint
        for parent in parents:
            node = node.setdefault(parent, {})
        path = ".".join(parents)
        if path in LIST_MAPS:
            node[name] = [value]
        elif path == "Metrics":
            try:
                node[name] = float(value)
            except ValueError:
                raise EndpointFileError(f"{column}: not a number: {value!r}") from None
        else:
            node[name] = value
    return endpoint


def write_endpoints(endpoints: list[dict], path: Path, fmt: str) -> None:
    """Write endpoints as ``csv`` (dotted header, columns in first-seen order) or ``json``."""
    if fmt == "json":
        path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in endpoints))
        return
    rows = [flatten(e) for e in endpoints]
    columns = list(dict.fromkeys(c for row in rows for c in row))
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def read_endpoints(path: Path) -> Iterator[dict]:
    """Endpoints of a CSV or newline-delimited JSON file (the format is sniffed)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise EndpointFileError(f"cannot read {path} as UTF-8: {exc}") from None
    if text.lstrip().startswith("{"):
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                endpoint = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise EndpointFileError(f"{path}:{number}: not JSON: {exc}") from None
            if not isinstance(endpoint, dict):
                raise EndpointFileError(f"{path}:{number}: expected a JSON object")
            yield endpoint
        return
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or "ChannelType" not in [c.strip() for c in reader.fieldnames]:
        raise EndpointFileError(f"{path}: expected a CSV header with ChannelType and Address")
    for number, row in enumerate(reader, 2):
        try:
            yield unflatten(row)
        except EndpointFileError as exc:
            raise EndpointFileError(f"{path}:{number}: {exc}") from None


# -- endpoints -> profiles -----------------------------------------------------------------


@dataclass
class ImportReport:
    endpoints: int = 0
    profiles: int = 0
    no_user_id: int = 0
    unsupported_channel: int = 0
    no_address: int = 0
    invalid: list[str] = field(default_factory=list)  # "<user id>: <reason>" (no addresses)


def _moment(value: object) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment.timestamp() if moment.tzinfo is not None else None


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _first(values: object) -> str | None:
    if isinstance(values, list) and values:
        return str(values[0])
    return values if isinstance(values, str) else None


def profile_events(
    endpoints: Iterable[dict], merchant_id: str, now: float, max_bytes: int = 65536
) -> tuple[list[dict], ImportReport]:
    """One validated ``ProfileEvent`` per user id; events the validator rejects are reported."""
    report = ImportReport()
    users: dict[str, list[tuple[int, dict]]] = {}
    for order, endpoint in enumerate(endpoints):
        report.endpoints += 1
        user_id = _first((endpoint.get("User") or {}).get("UserId"))
        if not user_id:
            report.no_user_id += 1
            continue
        if CHANNEL_OF_TYPE.get(str(endpoint.get("ChannelType", "")).upper()) is None:
            report.unsupported_channel += 1
            continue
        users.setdefault(user_id, []).append((order, endpoint))
    events = []
    for user_id, owned in users.items():
        event = _profile(user_id, owned, merchant_id, now, report)
        if event is None:
            continue
        try:
            parse_event(orjson.dumps(event), "profiles", max_bytes)
        except InvalidEvent as exc:
            report.invalid.append(f"{user_id[:64]}: {exc}")
            continue
        events.append(event)
    report.profiles = len(events)
    return events, report


def _profile(
    user_id: str, owned: list[tuple[int, dict]], merchant_id: str, now: float, report: ImportReport
) -> dict | None:
    # Latest EffectiveDate (then file order) wins when a channel has several endpoints.
    owned.sort(key=lambda item: (_moment(item[1].get("EffectiveDate")) or 0.0, item[0]))
    channels: dict[str, object] = {"email": None, "sms": None, "push": None, "in_app": False}
    opted_out, zone, preferred, country, times = [], None, None, None, []
    for _, endpoint in owned:
        channel = CHANNEL_OF_TYPE[str(endpoint["ChannelType"]).upper()]
        address = endpoint.get("Address")
        if channel != "in_app" and not address:
            report.no_address += 1
            continue
        off = str(endpoint.get("OptOut", "NONE")).upper() == "ALL"
        active = str(endpoint.get("EndpointStatus", "ACTIVE")).upper() != "INACTIVE"
        opted_out.append(off)
        if channel == "in_app":
            channels["in_app"] = active and not off
        else:
            channels[channel] = str(address) if active and not off else None
        zone = (endpoint.get("Demographic") or {}).get("Timezone") or zone
        country = (endpoint.get("Location") or {}).get("Country") or country
        attributes = (endpoint.get("User") or {}).get("UserAttributes") or {}
        preferred = _first(attributes.get("PreferredChannel")) or preferred
        if (moment := _moment(endpoint.get("EffectiveDate"))) is not None:
            times.append(moment)
    if not opted_out:
        return None
    consented = {c for c, v in channels.items() if v}
    preferred = preferred.lower() if preferred else None
    profile = {
        "channels": channels,
        "preferred_channel": preferred if preferred in consented else None,
        "time_zone": zone if time_zone(zone) is not None else None,
        "opted_out": all(opted_out),
    }
    if country:  # only when given: an import without one keeps its event ids
        profile["country"] = str(country)
    digest = hashlib.blake2b(orjson.dumps([user_id, profile]), digest_size=10).hexdigest()
    return {
        "schema_version": SCHEMA_VERSION,
        "event_id": f"pinpoint-{digest}",  # same content -> same id: a re-import deduplicates
        "event_type": "profile",
        "merchant_id": merchant_id,
        "customer_id": user_id,
        "session_id": None,
        "event_time": _iso(max(times) if times else now),
        **profile,
    }


def produce(events: list[dict], settings: Settings) -> None:
    """Send profile events to the profiles topic, keyed like every input (murmur2)."""
    from confluent_kafka import Producer

    from agents.tools.replay import producer_config

    producer = Producer(producer_config(settings))
    for event in events:
        key = f"{event['merchant_id']}:c:{event['customer_id']}".encode()
        while True:
            try:
                producer.produce(settings.topics.profiles, key=key, value=orjson.dumps(event))
                break
            except BufferError:
                producer.poll(0.05)
    remaining = producer.flush(30)
    if remaining:
        raise RuntimeError(f"{remaining} profile events not acknowledged by the broker")


def main(argv: list[str]) -> int:
    """``nextbest import-endpoints FILE --merchant M (--out FILE | --produce)``."""
    p = argparse.ArgumentParser(
        prog="nextbest import-endpoints",
        description="Pinpoint endpoint file (CSV or JSON lines) -> customer profile events",
    )
    p.add_argument("file", type=Path)
    p.add_argument("--merchant", required=True)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, help="write profile events as JSON lines")
    where.add_argument("--produce", action="store_true", help="send them to the profiles topic")
    args = p.parse_args(argv)
    settings = Settings.from_env()
    try:
        events, report = profile_events(
            read_endpoints(args.file), args.merchant, time.time(), settings.max_event_bytes
        )
    except EndpointFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.out:
        args.out.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    else:
        produce(events, settings)
    print(
        f"{report.endpoints} endpoints -> {report.profiles} profiles "
        f"({'written to ' + str(args.out) if args.out else 'sent to ' + settings.topics.profiles});"
        f" skipped: {report.no_user_id} without User.UserId, {report.unsupported_channel} on "
        f"unsupported channels, {report.no_address} without an address, "
        f"{len(report.invalid)} invalid"
    )
    for problem in report.invalid[:20]:
        print(f"  invalid: {problem}", file=sys.stderr)
    return 0
