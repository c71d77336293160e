"""Segment export (real model, real data slice) parsed back; Pinpoint and Personalize imports."""

from __future__ import annotations

import gzip
import json
from collections import Counter

import orjson
import pandas as pd
import pytest
import torch

from agents.tools import segments
from agents.tools.pinpoint import EndpointFileError, profile_events, read_endpoints
from agents.tools.replay import synthetic_profile
from models.next_purchase import artifact, train
from models.next_purchase.encoding import EncoderConfig, Vocab
from models.next_purchase.examples import build_examples
from models.next_purchase.interactions import load_interactions
from models.next_purchase.loading import load_orders, load_transactions
from schemas.validation import parse_event
from tests.harness import DATA_FILE

ROWS = 60000  # the first ~6 weeks of the UCI Online Retail file (Dec 2010 - mid Jan 2011)


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """A real data slice and a small next-purchase model trained on it."""
    if not DATA_FILE.exists():
        pytest.skip(f"{DATA_FILE} not found")
    tmp = tmp_path_factory.mktemp("segments")
    data = tmp / "retail.csv"
    with gzip.open(DATA_FILE, "rt", encoding="utf-8", errors="replace") as f:
        pd.read_csv(f, dtype=str, nrows=ROWS).to_csv(data, index=False)
    torch.set_num_threads(1)
    argv = ["--data", str(data), "--out", str(tmp / "models"), "--seed", "0", "--device", "cpu"]
    assert train.main([*argv, "--max-epochs", "2", "--time-budget-s", "30"]) == 0
    model = artifact.resolve(tmp / "models")
    return tmp, data, model, target_product(artifact.load(model), load_orders(data)[0])


def target_product(recommender, orders) -> str:
    """The product in most customers' top 10 among those in at most half of them."""
    counts = Counter(
        item for s in recommender.score_batch(list(orders.values()), k=10) for item in s.items
    )
    return max((n, p) for p, n in counts.items() if n <= len(orders) / 2)[1]


def test_members_are_the_customers_whose_top_k_holds_the_product(shop):
    _, data, model, product = shop
    recommender = artifact.load(model)
    orders, _ = load_orders(data)
    members = segments.predict_members(recommender, orders, {product}, top_k=10)
    assert len(members) > 20
    assert [m.score for m in members] == sorted((m.score for m in members), reverse=True)
    scored = dict(
        zip(
            sorted(orders),
            recommender.score_batch([orders[c] for c in sorted(orders)], k=10),
            strict=True,
        )
    )
    for m in members:
        s = scored[m.customer_id]
        assert s.items[m.rank - 1] == product == m.product
        assert m.score == pytest.approx(s.scores[m.rank - 1])
    outside = set(orders) - {m.customer_id for m in members}
    assert outside and all(product not in scored[c].items for c in outside)


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_exported_endpoint_file_parses_back(shop, fmt, capsys):
    tmp, data, model, product = shop
    out = tmp / f"segment.{fmt}"
    argv = [
        "--model",
        str(model.parent),
        "--data",
        str(data),
        "--product",
        product,
        "--synthetic-profiles",
        "--format",
        fmt,
        "--out",
        str(out),
    ]
    assert segments.main(argv) == 0
    summary = capsys.readouterr().out
    assert f"predicted to buy {product} next" in summary

    endpoints = list(read_endpoints(out))
    assert endpoints
    orders, _ = load_orders(data)
    members = {
        m.customer_id: m
        for m in segments.predict_members(artifact.load(model), orders, {product}, top_k=10)
    }
    users = set()
    for e in endpoints:
        user = e["User"]["UserId"]
        users.add(user)
        profile = synthetic_profile(user, "")
        assert not profile["opted_out"]
        channel = {"EMAIL": "email", "SMS": "sms", "GCM": "push"}[e["ChannelType"]]
        assert e["Address"] == profile["channels"][channel]
        assert e["Id"] == f"{user}-{channel}"
        assert e["Attributes"]["PredictedProduct"] == [product]
        assert e["Attributes"]["Segment"] == [f"next-{product}"]
        assert e["Attributes"]["ModelVersion"] == [model.name]
        assert float(e["Metrics"]["PredictedScore"]) == pytest.approx(members[user].score, abs=1e-6)
        assert float(e["Metrics"]["PredictedRank"]) == members[user].rank
        assert e["OptOut"] == "NONE" and e["EndpointStatus"] == "ACTIVE"
    # Everyone predicted is exported unless opted out or without an addressable channel.
    expected = {
        c
        for c in members
        if not synthetic_profile(c, "")["opted_out"]
        and any(synthetic_profile(c, "")["channels"][ch] for ch in ("email", "sms", "push"))
    }
    assert users == expected
    if fmt == "csv":
        header = out.read_text().splitlines()[0].split(",")
        assert {
            "ChannelType",
            "Address",
            "User.UserId",
            "Attributes.PredictedProduct",
            "Metrics.PredictedScore",
        } <= set(header)
    else:
        assert all(isinstance(json.loads(line), dict) for line in out.read_text().splitlines())


def test_segment_round_trips_through_the_pinpoint_import(shop):
    tmp, data, model, product = shop
    out = tmp / "roundtrip.csv"
    segments.main(
        [
            "--model",
            str(model),
            "--data",
            str(data),
            "--product",
            product,
            "--synthetic-profiles",
            "--out",
            str(out),
        ]
    )
    events, report = profile_events(read_endpoints(out), "uci-gift-shop", now=1_323_435_000.0)
    assert report.profiles == len(events) > 0 and not report.invalid
    for event in events:
        source = synthetic_profile(event["customer_id"], "")
        for channel in ("email", "sms", "push"):
            assert event["channels"][channel] == source["channels"][channel]
        if source["preferred_channel"] in ("email", "sms", "push"):
            assert event["preferred_channel"] == source["preferred_channel"]
        assert event["opted_out"] is False


def test_category_segment_sums_the_categorys_products(shop):
    tmp, data, model, product = shop
    recommender = artifact.load(model)
    orders, _ = load_orders(data)
    category = {product, *recommender.vocab.items[30:32]}
    members = segments.predict_members(recommender, orders, category, top_k=10)
    single = {
        m.customer_id: m.score
        for m in segments.predict_members(recommender, orders, {product}, top_k=10)
    }
    assert len(members) >= len(single)
    for m in members:
        assert m.score >= single.get(m.customer_id, 0.0) - 1e-9
    categories = tmp / "categories.csv"
    categories.write_text("product_id,category\n" + "".join(f"{p},top3\n" for p in category))
    assert segments.read_categories(categories, "top3") == category


# -- Pinpoint endpoint import ---------------------------------------------------------------

ENDPOINTS_CSV = """ChannelType,Address,EndpointStatus,OptOut,Id,User.UserId,Demographic.Timezone,\
User.UserAttributes.PreferredChannel,EffectiveDate,Location.Country
EMAIL,old@example.com,ACTIVE,NONE,e1,u1,Europe/London,SMS,2024-01-01T00:00:00Z,GB
EMAIL,new@example.com,ACTIVE,NONE,e2,u1,Europe/London,SMS,2024-06-01T00:00:00Z,GB
SMS,+447700900123,ACTIVE,NONE,e3,u1,,,2024-02-01T00:00:00Z,GB
APNS,token-u1,INACTIVE,NONE,e4,u1,,,,GB
EMAIL,gone@example.com,ACTIVE,ALL,e5,u2,Not/AZone,,,US
GCM,token-u2,ACTIVE,ALL,e6,u2,,,,US
VOICE,+12065550100,ACTIVE,NONE,e7,u3,,,,US
SMS,+12065550182,ACTIVE,NONE,e8,,,,,US
EMAIL,u4@example.com,ACTIVE,NONE,e9,u4,America/New_York,PUSH,,US
"""


def test_pinpoint_csv_to_profiles(tmp_path):
    path = tmp_path / "endpoints.csv"
    path.write_text(ENDPOINTS_CSV)
    events, report = profile_events(read_endpoints(path), "uci-gift-shop", now=1.7e9)
    by_user = {e["customer_id"]: e for e in events}
    assert (report.endpoints, report.profiles, report.no_user_id, report.unsupported_channel) == (
        9,
        3,
        1,
        1,
    )
    u1 = by_user["u1"]
    assert u1["channels"] == {
        "email": "new@example.com",
        "sms": "+447700900123",
        "push": None,
        "in_app": False,
    }  # latest e-mail wins; inactive push: no consent
    assert (u1["preferred_channel"], u1["time_zone"], u1["opted_out"]) == (
        "sms",
        "Europe/London",
        False,
    )
    assert u1["event_time"] == "2024-06-01T00:00:00Z"
    assert u1["country"] == "GB" and by_user["u4"]["country"] == "US"
    u2 = by_user["u2"]
    assert u2["opted_out"] is True and u2["time_zone"] is None  # all endpoints opted out
    assert u2["channels"]["email"] is None and u2["channels"]["push"] is None
    u4 = by_user["u4"]
    assert u4["preferred_channel"] is None  # preferred push without a push endpoint
    for event in events:  # valid on the Kafka path, as the worker would check them
        parse_event(orjson.dumps(event), "profiles", 65536)
    again, _ = profile_events(read_endpoints(path), "uci-gift-shop", now=1.8e9)
    assert [e["event_id"] for e in again] == [e["event_id"] for e in events]  # re-import dedupes


def test_pinpoint_json_lines_and_bad_files(tmp_path):
    path = tmp_path / "endpoints.json"
    lines = [
        {
            "ChannelType": "SMS",
            "Address": "+12065550182",
            "User": {"UserId": "u9"},
            "Demographic": {"Timezone": "America/Los_Angeles"},
            "Attributes": {"Interests": ["Music"]},
            "Metrics": {"score": 0.4},
        },
        {"ChannelType": "IN_APP", "User": {"UserId": "u9"}},
    ]
    path.write_bytes(b"\n".join(orjson.dumps(line) for line in lines) + b"\n")
    [event], _ = profile_events(read_endpoints(path), "uci-gift-shop", now=1.7e9)
    assert event["channels"] == {"email": None, "sms": "+12065550182", "push": None, "in_app": True}
    assert event["time_zone"] == "America/Los_Angeles"
    bad = tmp_path / "bad.csv"
    bad.write_text("name,email\nx,y\n")
    with pytest.raises(EndpointFileError, match="ChannelType"):
        list(read_endpoints(bad))
    bad.write_text('{"ChannelType": "SMS"}\n{not json\n')
    with pytest.raises(EndpointFileError, match=":2: not JSON"):
        list(read_endpoints(bad))
    bad.write_text("ChannelType,Address,Metrics.score\nSMS,+1,high\n")
    with pytest.raises(EndpointFileError, match="Metrics.score: not a number"):
        list(read_endpoints(bad))


# -- Personalize interactions ---------------------------------------------------------------


def test_personalize_interactions_give_the_same_histories_as_the_retail_loader(shop, tmp_path):
    data = shop[1]
    lines, _ = load_transactions(data)
    retail, _ = load_orders(data)
    rows = pd.DataFrame(
        {
            "USER_ID": lines["customer"],
            "ITEM_ID": lines["product"].str.lower(),  # normalized like the retail loader does
            # the order time: an invoice's lines can be stamped a minute apart in the file
            "TIMESTAMP": lines.groupby(["customer", "invoice"])["seconds"]
            .transform("min")
            .astype("int64"),
            "EVENT_TYPE": "Purchase",
        }
    )
    clicks = rows.head(500).assign(EVENT_TYPE="click")
    junk = pd.DataFrame(
        {
            "USER_ID": ["", "u"],
            "ITEM_ID": ["x", "y"],
            "TIMESTAMP": ["1", "yesterday"],
            "EVENT_TYPE": ["purchase"] * 2,
        }
    )
    path = tmp_path / "interactions.csv"
    pd.concat([rows, clicks, junk]).sample(frac=1.0, random_state=0).to_csv(path, index=False)

    orders, report = load_interactions(path)
    assert (report.other_event_type, report.missing_id, report.bad_timestamp) == (500, 1, 1)
    assert report.kept == len(rows) and set(orders) == set(retail)

    def shape(history):  # the file was shuffled: compare the products of an order as a set
        return [(t, sorted(products)) for t, products in history]

    # An order is one timestamp here and one invoice there: they differ only where a customer
    # has two invoices in the same minute, whose products then form one order.
    same = [c for c in retail if shape(orders[c]) == shape(retail[c])]
    for c in set(retail) - set(same):
        merged: dict[float, set] = {}
        for t, products in retail[c]:
            merged.setdefault(t, set()).update(products)
        assert shape(orders[c]) == [(t, sorted(p)) for t, p in sorted(merged.items())]
    assert len(same) > 0.95 * len(retail)
    vocab = Vocab.build(orders)
    assert build_examples(orders, vocab, EncoderConfig())  # usable as training examples


def test_personalize_without_event_type_and_with_an_order_window(tmp_path):
    path = tmp_path / "interactions.csv"
    path.write_text("user_id,item_id,timestamp\nu1,A,100\nu1,B,130\nu1,A,500\nu2,C,50\n")
    orders, report = load_interactions(path, order_window_s=60)
    assert orders == {"u1": [(100.0, ["A", "B"]), (500.0, ["A"])], "u2": [(50.0, ["C"])]}
    assert (report.customers, report.orders) == (2, 3)
    bad = tmp_path / "bad.csv"
    bad.write_text("USER,ITEM\n1,2\n")
    with pytest.raises(ValueError, match="missing"):
        load_interactions(bad)
