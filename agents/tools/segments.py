"""Segments: the customers the next-purchase model predicts will buy a product (or one of a
category's products) next, or the customers in a churn-risk band, exported as a
Pinpoint-compatible endpoint file (``nextbest segment``).

    nextbest segment --model var/models/next_purchase --product 85123A --synthetic-profiles \\
        --format csv --out segment.csv
    nextbest segment --churn-band high --synthetic-profiles --out at-risk.csv

A churn-risk segment (``--churn-band low|medium|high``) needs no model: each customer's risk is
`streams.state.churn.score` over their orders before ``--as-of`` (default: the file's last
order), as the worker keeps it; its endpoints carry ``Attributes.ChurnBand`` and the risk as
``Metrics.PredictedScore``.

Histories come from an Online Retail file (`models.next_purchase.loading.load_orders`),
optionally cut at
``--as-of``; each customer's top ``--top-k`` predictions come from
``artifact.load(model).score_batch(histories, k)``. A customer is in the segment when the
product is among their top-k (score: its probability), or for a category when any of its
products is (score: the summed probability of those products). Addresses come from profile
events (``--profiles``: JSON lines, e.g. written by ``nextbest import-endpoints``) or, for the
UCI data which has none, from the replay's synthetic profiles (``--synthetic-profiles``).
Opted-out customers and channels without consent are left out and counted.

One endpoint per consented channel: ``ChannelType`` (EMAIL, SMS, push as ``--push-type``),
``Address``, ``Id``, ``User.UserId``, ``OptOut: NONE``, ``EndpointStatus: ACTIVE``,
``Demographic.Timezone``, custom attributes ``Attributes.PredictedProduct`` /
``PredictedCategory`` / ``Segment`` / ``ModelVersion``, ``User.UserAttributes.PreferredChannel``,
and metrics ``Metrics.PredictedScore`` and ``Metrics.PredictedRank``.
"""

from __future__ import annotations

import argparse
import csv
import inspect
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import orjson

from agents.tools.pinpoint import write_endpoints
from models.next_purchase.encoding import Order
from models.next_purchase.loading import epoch_seconds, load_orders, split_at
from streams.state import churn
from streams.state.products import normalize_product

CHANNEL_TYPES = {"email": "EMAIL", "sms": "SMS"}


class Scorer(Protocol):
    def score_batch(self, histories: list[list[Order]], k: int = 10) -> list: ...


@dataclass(frozen=True)
class Member:
    customer_id: str
    score: float
    rank: int  # 1-based rank of the (best) target product in the customer's predictions
    product: str  # the (best-placed) target product
    churn_band: str | None = None  # a churn-risk segment's band (score: the churn risk)


@dataclass
class SegmentReport:
    customers: int = 0
    predicted: int = 0  # customers whose top-k holds a target product
    exported: int = 0
    endpoints: int = 0
    no_profile: int = 0
    opted_out: int = 0
    no_consent: int = 0
    members: list[Member] = field(default_factory=list)


def predict_members(
    scorer: Scorer,
    orders: dict[str, list[Order]],
    targets: set[str],
    top_k: int,
    now: float | None = None,
) -> list[Member]:
    """Customers with a target product in their top-k, best score first."""
    customers = sorted(orders)
    histories = [orders[c] for c in customers]
    kwargs = {}
    if now is not None and "now" in inspect.signature(scorer.score_batch).parameters:
        kwargs["now"] = now
    members = []
    for customer, scored in zip(
        customers, scorer.score_batch(histories, k=top_k, **kwargs), strict=True
    ):
        hits = [
            (r, item, p)
            for r, (item, p) in enumerate(zip(scored.items, scored.scores, strict=True), 1)
            if item in targets
        ]
        if hits:
            rank, product, _ = hits[0]
            members.append(Member(customer, sum(p for *_, p in hits), rank, product))
    members.sort(key=lambda m: (-m.score, m.customer_id))
    return members


def endpoints_for(
    member: Member,
    profile: dict,
    segment: str,
    model_version: str,
    category: str | None,
    push_type: str,
) -> list[dict]:
    channels = profile.get("channels") or {}
    preferred = profile.get("preferred_channel")
    endpoints = []
    for channel in ("email", "sms", "push"):
        address = channels.get(channel)
        if not address:
            continue
        attributes = {
            "PredictedProduct": [member.product],
            "Segment": [segment],
            "ModelVersion": [model_version],
        }
        if category is not None:
            attributes["PredictedCategory"] = [category]
        if member.churn_band is not None:  # a churn-risk segment: no product predicted
            del attributes["PredictedProduct"]
            attributes["ChurnBand"] = [member.churn_band]
        endpoint = {
            "ChannelType": CHANNEL_TYPES.get(channel, push_type),
            "Address": address,
            "Id": f"{member.customer_id}-{channel}",
            "OptOut": "NONE",
            "EndpointStatus": "ACTIVE",
            "User": {"UserId": member.customer_id},
            "Attributes": attributes,
            "Metrics": {"PredictedScore": round(member.score, 6), "PredictedRank": member.rank},
        }
        if preferred:
            endpoint["User"]["UserAttributes"] = {"PreferredChannel": [preferred]}
        if profile.get("time_zone"):
            endpoint["Demographic"] = {"Timezone": profile["time_zone"]}
        endpoints.append(endpoint)
    return endpoints


def export_segment(
    members: Sequence[Member],
    profiles: dict[str, dict],
    segment: str,
    model_version: str,
    category: str | None = None,
    push_type: str = "GCM",
) -> tuple[list[dict], SegmentReport]:
    report = SegmentReport(predicted=len(members), members=list(members))
    endpoints = []
    for member in members:
        profile = profiles.get(member.customer_id)
        if profile is None:
            report.no_profile += 1
            continue
        if profile.get("opted_out"):
            report.opted_out += 1
            continue
        rows = endpoints_for(member, profile, segment, model_version, category, push_type)
        if not rows:
            report.no_consent += 1
            continue
        report.exported += 1
        endpoints.extend(rows)
    report.endpoints = len(endpoints)
    return endpoints, report


def churn_members(data: str, band: str, now: float | None) -> tuple[int, list[Member]]:
    """Customers whose churn risk (`streams.state.churn`, from their orders before ``now``,
    default the file's last order) is in ``band``, riskiest first; and how many were scored."""
    from models.churn.evaluate import history, invoices_of

    invoices = invoices_of(data)
    if now is None:
        now = max(seq[-1][0] for seq in invoices.values()) if invoices else 0.0
    members, scored = [], 0
    for customer, seq in invoices.items():
        before = [invoice for invoice in seq if invoice[0] < now]
        if not before:
            continue
        scored += 1
        risk = churn.score(history(before), now)
        if churn.band(risk) == band:
            members.append(Member(customer, risk, 1, "", band))
    members.sort(key=lambda m: (-m.score, m.customer_id))
    return scored, members


def read_profiles(path: Path) -> dict[str, dict]:
    """customer id -> latest profile from a JSON-lines file of ProfileEvents."""
    latest: dict[str, dict] = {}
    for line in path.read_bytes().splitlines():
        if not line.strip():
            continue
        event = orjson.loads(line)
        customer = event.get("customer_id")
        if customer and (
            customer not in latest or event["event_time"] >= latest[customer]["event_time"]
        ):
            latest[customer] = event
    return latest


def synthetic_profiles(customers: Sequence[str]) -> dict[str, dict]:
    """The replay's made-up consent for UCI customers (the data set has no contact data)."""
    from agents.tools.replay import synthetic_profile

    return {c: synthetic_profile(c, "") for c in customers}


def read_categories(path: Path, category: str) -> set[str]:
    """Products of ``category`` from a CSV with ``product_id`` and ``category`` columns."""
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"product_id", "category"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: expected columns product_id,category")
        return {normalize_product(r["product_id"]) for r in reader if r["category"] == category}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="nextbest segment", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="var/models/next_purchase", help="artifact root or version")
    p.add_argument("--data", default="../shared/data/online_retail.csv.gz", help="order history")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--product", help="product id (stock code)")
    target.add_argument("--category", help="category name, with --categories")
    target.add_argument(
        "--churn-band",
        choices=[name for _, name in churn.BANDS],
        help="customers in this churn-risk band (no model needed)",
    )
    p.add_argument("--categories", type=Path, help="CSV with product_id,category columns")
    p.add_argument("--top-k", type=int, default=10, help="predictions per customer")
    p.add_argument("--min-score", type=float, default=0.0)
    p.add_argument("--limit", type=int, default=0, help="at most this many customers")
    p.add_argument("--as-of", help="use orders before this date (ISO) as history")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--profiles", type=Path, help="JSON lines of ProfileEvents (addresses)")
    who.add_argument("--synthetic-profiles", action="store_true", help="UCI demo: made-up ones")
    p.add_argument("--push-type", default="GCM", help="ChannelType for push tokens (GCM, APNS)")
    p.add_argument("--format", choices=("csv", "json"), default="csv")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if args.category and not args.categories:
        p.error("--category needs --categories FILE")
    if args.top_k < 1:
        p.error("--top-k must be >= 1")
    return args


def main(argv: list[str]) -> int:
    from models.next_purchase import artifact

    args = parse_args(argv)
    if args.churn_band:
        return churn_segment(args)
    orders, _ = load_orders(args.data)
    now = None
    if args.as_of:
        now = epoch_seconds(args.as_of)
        orders, _ = split_at(orders, now)
    if args.product:
        targets, segment, category = {normalize_product(args.product)}, args.product, None
    else:
        targets = read_categories(args.categories, args.category)
        segment, category = args.category, args.category
        if not targets:
            print(f"no products in category {args.category!r}", file=sys.stderr)
            return 1
    path = artifact.resolve(args.model)
    members = predict_members(artifact.load(path), orders, targets, args.top_k, now)
    members = [m for m in members if m.score >= args.min_score]
    if args.limit:
        members = members[: args.limit]
    endpoints, report = export_segment(
        members, _profiles(args, members), f"next-{segment}", path.name, category, args.push_type
    )
    write_endpoints(endpoints, args.out, args.format)
    print(
        f"{len(orders)} customers scored; {report.predicted} predicted to buy {segment} next "
        f"(top {args.top_k}); {report.exported} exported as {report.endpoints} endpoints to "
        f"{args.out}; left out: {report.opted_out} opted out, {report.no_consent} without "
        f"consent, {report.no_profile} without a profile"
    )
    return 0


def _profiles(args: argparse.Namespace, members: Sequence[Member]) -> dict[str, dict]:
    if args.synthetic_profiles:
        return synthetic_profiles([m.customer_id for m in members])
    return read_profiles(args.profiles)


def churn_segment(args: argparse.Namespace) -> int:
    now = epoch_seconds(args.as_of) if args.as_of else None
    scored, members = churn_members(args.data, args.churn_band, now)
    members = [m for m in members if m.score >= args.min_score]
    if args.limit:
        members = members[: args.limit]
    segment = f"churn-{args.churn_band}"
    endpoints, report = export_segment(
        members, _profiles(args, members), segment, churn.MODEL_VERSION, None, args.push_type
    )
    write_endpoints(endpoints, args.out, args.format)
    print(
        f"{scored} customers scored; {report.predicted} in churn-risk band {args.churn_band}; "
        f"{report.exported} exported as {report.endpoints} endpoints to {args.out}; left out: "
        f"{report.opted_out} opted out, {report.no_consent} without consent, "
        f"{report.no_profile} without a profile"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
