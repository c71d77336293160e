"""Merchant catalogs: parsing streams/merchants/merchants.yaml, every CatalogError, run-time
updates."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agents.runtime.settings import DEFAULT_MERCHANTS, Settings
from streams.merchants.catalog import (
    CatalogError,
    FrequencyCap,
    Merchant,
    MerchantRegistry,
    Promotion,
    load_merchants,
    parse_merchant,
)


def ts(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


VALID = {
    "name": "Test shop",
    "currency": "EUR",
    "shipping_cost": 4.5,
    "nudge_max_gap": 10,
    "frequency_cap": {"max_messages": 3, "period_hours": 12},
    "channel_order": ["email", "push"],
    "promotions": [
        {"id": "fs", "type": "free_shipping", "min_spend": 50, "title": "Free shipping"},
        {
            "id": "p10",
            "type": "percent_off",
            "percent": 10,
            "min_spend": 100,
            "valid_from": "2011-11-01T00:00:00Z",
            "valid_to": "2011-12-01T00:00:00+01:00",
        },
    ],
}


def config(**changes: object) -> dict:
    result = copy.deepcopy(VALID)
    result.update(changes)
    return result


def promo(**changes: object) -> dict:
    return config(promotions=[{"id": "p", "type": "percent_off", "percent": 5, **changes}])


def test_load_the_shipped_merchants_file():
    merchants = load_merchants(DEFAULT_MERCHANTS)
    assert list(merchants) == ["uci-gift-shop"]
    shop = merchants["uci-gift-shop"]
    assert (shop.currency, shop.shipping_cost, shop.nudge_max_gap) == ("GBP", 6.95, 25.0)
    assert shop.frequency_cap == FrequencyCap(max_messages=2, period_s=24 * 3600.0)
    assert shop.channel_order == ("in_app", "push", "email", "sms")
    assert [p.id for p in shop.promotions] == [
        "free-shipping-60",
        "five-off-150",
        "ten-off-300",
        "fifteen-off-600",
        "holiday-twenty-off-1000",
    ]
    assert [p.min_spend for p in shop.promotions] == [60, 150, 300, 600, 1000]
    assert [p.percent for p in shop.promotions] == [0, 5, 10, 15, 20]
    holiday = shop.promotions[-1]
    assert (holiday.valid_from, holiday.valid_to) == (ts(2011, 11, 1), ts(2011, 12, 25))
    assert holiday.active(ts(2011, 12, 1)) and not holiday.active(ts(2011, 12, 25))
    assert not holiday.active(ts(2011, 10, 31, 23, 59))
    assert shop.promotions[0].active(0.0)  # no window: always active


def test_registry_from_settings():
    registry = MerchantRegistry.from_file(Settings().merchants_path)
    assert registry.ids() == ["uci-gift-shop"]
    assert "uci-gift-shop" in registry and "nope" not in registry
    assert registry.get("nope") is None


def test_parse_merchant_full_config():
    merchant = parse_merchant("shop", VALID)
    assert merchant == Merchant(
        id="shop",
        name="Test shop",
        currency="EUR",
        shipping_cost=4.5,
        nudge_max_gap=10.0,
        frequency_cap=FrequencyCap(max_messages=3, period_s=12 * 3600.0),
        channel_order=("email", "push"),
        promotions=(
            Promotion("fs", "free_shipping", min_spend=50.0, title="Free shipping"),
            Promotion(
                "p10",
                "percent_off",
                min_spend=100.0,
                percent=10.0,
                valid_from=ts(2011, 11, 1),
                valid_to=ts(2011, 11, 30, 23),
            ),
        ),
    )


def test_parse_merchant_defaults():
    merchant = parse_merchant("m", {"currency": "GBP"})
    assert merchant == Merchant(id="m", name="m", currency="GBP", shipping_cost=0.0, promotions=())
    assert merchant.frequency_cap == FrequencyCap()


def test_json_merchants_file_and_yaml_datetimes(tmp_path):
    path = tmp_path / "merchants.json"
    path.write_text(json.dumps({"merchants": {"a": VALID, "b": {"currency": "USD"}}}))
    assert sorted(load_merchants(path)) == ["a", "b"]
    yaml_path = tmp_path / "m.yaml"
    yaml_path.write_text(
        "merchants:\n  7:\n    currency: GBP\n    promotions:\n"
        "      - {id: x, type: free_shipping, valid_from: 2011-01-01T00:00:00Z}\n"
    )
    merchants = load_merchants(yaml_path)
    assert list(merchants) == ["7"]  # ids are strings even when YAML reads a number
    assert merchants["7"].promotions[0].valid_from == ts(2011, 1, 1)


@pytest.mark.parametrize(
    ("merchant_config", "message"),
    [
        (config(currency="GB"), "merchants.m.currency: expected a 3-letter currency code"),
        (config(currency="POUND"), "currency: expected a 3-letter currency code"),
        (config(currency=826), "currency: expected a 3-letter currency code"),
        ({"promotions": []}, "merchants.m.currency: required"),
        (config(currency="eur"), "currency: expected a 3-letter currency code"),  # upper case
        (["GBP"], "merchants.m: expected a mapping"),
        (config(promotions={"id": "x"}), "merchants.m.promotions: expected a list"),
        (config(promotions=["fs"]), "merchants.m.promotions[0]: expected a mapping"),
        (promo(type="bogo"), "merchants.m.promotions[0].type: must be one of"),
        (promo(type=None), "promotions[0].type: must be one of"),
        (promo(id=""), "merchants.m.promotions[0].id: expected a non-empty string"),
        (promo(id=None), "promotions[0].id: expected a string, got None"),
        (promo(percent=0), "promotions[0].percent: must be between 0 and 100 for percent_off"),
        (promo(percent=100), "must be between 0 and 100"),
        (promo(percent=150), "promotions[0].percent: expected a number <= 100, got 150"),
        (promo(percent=-5), "promotions[0].percent: expected a number >= 0, got -5"),
        (promo(percent="5"), "percent: expected a number, got '5'"),
        (promo(min_spend=-1), "promotions[0].min_spend: expected a number >= 0, got -1"),
        (promo(min_spend=True), "min_spend: expected a number, got True"),
        (
            promo(valid_from="2011-12-01T00:00:00Z", valid_to="2011-11-01T00:00:00Z"),
            "merchants.m.promotions[0]: valid_to must be after valid_from",
        ),
        (
            promo(valid_from="2011-12-01T00:00:00Z", valid_to="2011-12-01T01:00:00+01:00"),
            "valid_to must be after valid_from",  # the same instant
        ),
        (promo(valid_from="soon"), "promotions[0].valid_from: not an ISO 8601 time: 'soon'"),
        (promo(valid_to="2011-12-25T00:00:00"), "promotions[0].valid_to: needs a UTC offset"),
        (
            config(promotions=[{"id": "a", "type": "free_shipping"}] * 2),
            "merchants.m.promotions: duplicate promotion ids",
        ),
        (config(channel_order=["email", "fax"]), "channel_order[1]: must be one of"),
        (config(shipping_cost=-1), "merchants.m.shipping_cost: expected a number >= 0"),
        (config(nudge_max_gap="10"), "merchants.m.nudge_max_gap: expected a number, got '10'"),
        (
            config(frequency_cap={"max_messages": -1}),
            "merchants.m.frequency_cap.max_messages: expected a number >= 0",
        ),
        (config(frequency_cap={"period_hours": None}), "frequency_cap.period_hours"),
    ],
)
def test_catalog_errors_name_the_field(merchant_config, message):
    with pytest.raises(CatalogError) as info:
        parse_merchant("m", merchant_config)
    assert message in str(info.value)


@pytest.mark.parametrize(
    "bad",
    [
        {"frequency_cap": None},
        {"frequency_cap": "daily"},
        {"channel_order": None},
        {"channel_order": 5},
    ],
)
def test_wrongly_typed_sections_raise_catalog_error(bad):
    with pytest.raises(CatalogError):
        parse_merchant("m", config(**bad))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("merchants: [a, b]", "expected a top-level 'merchants' mapping"),
        ("shops: {}", "expected a top-level 'merchants' mapping"),
        ("", "expected a top-level 'merchants' mapping"),
        ("merchants: {a: {currency: GBP}\n", "cannot read merchants file"),  # YAML syntax
    ],
)
def test_bad_merchants_files(tmp_path, content, message):
    path = tmp_path / "merchants.yaml"
    path.write_text(content)
    with pytest.raises(CatalogError, match=message):
        load_merchants(path)


@pytest.mark.parametrize("merchant_id", ["shop:eu", ""])
def test_a_merchant_id_is_not_empty_and_holds_no_colon(merchant_id):
    with pytest.raises(CatalogError, match="holds no ':'"):
        parse_merchant(merchant_id, {"currency": "GBP"})


def test_unreadable_merchants_file(tmp_path):
    with pytest.raises(CatalogError, match="cannot read merchants file"):
        load_merchants(tmp_path / "missing.yaml")
    with pytest.raises(CatalogError, match="cannot read merchants file"):
        load_merchants(tmp_path)  # a directory


def test_non_utf8_merchants_file_is_a_catalog_error(tmp_path):
    path = tmp_path / "merchants.yaml"
    path.write_bytes(b"\xff\xfemerchants: {}\n")
    with pytest.raises(CatalogError, match="cannot read merchants file"):
        load_merchants(path)


def test_error_in_one_merchant_fails_the_whole_file(tmp_path):
    path = tmp_path / "merchants.yaml"
    path.write_text("merchants:\n  good: {currency: GBP}\n  bad: {currency: POUNDS}\n")
    with pytest.raises(CatalogError, match="merchants.bad.currency"):
        load_merchants(path)


# --- run-time updates -----------------------------------------------------------------------


@pytest.fixture
def registry() -> MerchantRegistry:
    return MerchantRegistry(load_merchants(DEFAULT_MERCHANTS))


def test_apply_update_adds_replaces_and_removes(registry):
    registry.apply_update("new-shop", config())
    assert registry.ids() == ["new-shop", "uci-gift-shop"]
    assert registry.get("new-shop").currency == "EUR"
    registry.apply_update("new-shop", config(currency="USD", promotions=[]))
    assert registry.get("new-shop").currency == "USD"
    assert registry.get("new-shop").promotions == ()
    registry.apply_update("new-shop", None)
    assert "new-shop" not in registry and registry.ids() == ["uci-gift-shop"]
    registry.apply_update("never-there", None)  # removing an unknown merchant is a no-op
    assert registry.ids() == ["uci-gift-shop"]


def test_update_swaps_the_dict_so_readers_keep_a_consistent_view(registry):
    before = registry._merchants
    registry.apply_update("x", {"currency": "GBP"})
    assert registry._merchants is not before and "x" not in before


@pytest.mark.parametrize(
    "bad", [config(currency="GB"), promo(percent=0), config(channel_order=["fax"]), []]
)
def test_invalid_update_leaves_the_registry_unchanged(registry, bad):
    shop = registry.get("uci-gift-shop")
    snapshot = dict(registry._merchants)
    with pytest.raises(CatalogError):
        registry.apply_update("uci-gift-shop", bad)
    with pytest.raises(CatalogError):
        registry.apply_update("brand-new", bad)
    assert registry._merchants == snapshot
    assert registry.get("uci-gift-shop") is shop
    assert "brand-new" not in registry


def test_registry_copies_its_input():
    merchants = {"m": parse_merchant("m", {"currency": "GBP"})}
    registry = MerchantRegistry(merchants)
    merchants.clear()
    assert registry.ids() == ["m"]


def test_promotion_window_is_half_open():
    p = Promotion("p", "percent_off", 0.0, percent=5, valid_from=10.0, valid_to=20.0)
    assert [p.active(t) for t in (9.99, 10.0, 19.99, 20.0)] == [False, True, True, False]


def test_merchants_yaml_path_is_the_packaged_file():
    assert Path(DEFAULT_MERCHANTS).name == "merchants.yaml" and DEFAULT_MERCHANTS.is_file()


# --- promotion policy fields: cost model and limits (all optional) ---------------------------


def test_shipped_merchants_file_gets_the_policy_defaults():
    shop = load_merchants(DEFAULT_MERCHANTS)["uci-gift-shop"]
    assert (shop.margin_rate, shop.min_margin_rate, shop.offer_ttl_hours) == (0.3, 0.0, 48.0)
    assert (shop.deep_discount_depth, shop.deep_discount_cost) == (0.15, 0.02)
    assert shop.product_coupons == ()
    for p in shop.promotions:
        assert (p.budget, p.max_discount, p.max_per_customer, p.per_customer_days) == (None,) * 4
        assert (p.exclusive, p.group) == (False, "")


def test_policy_fields_are_parsed():
    merchant = parse_merchant(
        "m",
        config(
            margin_rate=0.4,
            min_margin_rate=0.1,
            offer_ttl_hours=24,
            deep_discount_depth=0.2,
            deep_discount_cost=0.05,
            promotions=[
                {
                    "id": "p10",
                    "type": "percent_off",
                    "percent": 10,
                    "budget": 500,
                    "max_discount": 40,
                    "max_per_customer": 2,
                    "per_customer_days": 30,
                    "group": "percent",
                },
                {"id": "fs", "type": "free_shipping", "exclusive": True},
                {"id": "coupon", "type": "product_coupon", "percent": 20, "max_discount": 5},
            ],
        ),
    )
    assert (merchant.margin_rate, merchant.min_margin_rate, merchant.offer_ttl_hours) == (
        0.4,
        0.1,
        24.0,
    )
    assert (merchant.deep_discount_depth, merchant.deep_discount_cost) == (0.2, 0.05)
    assert [p.id for p in merchant.promotions] == ["p10", "fs"]  # tiers only: the rules read them
    p10, fs = merchant.promotions
    assert (p10.budget, p10.max_discount, p10.max_per_customer, p10.per_customer_days) == (
        500.0,
        40.0,
        2,
        30.0,
    )
    assert p10.group == "percent" and not p10.exclusive
    assert fs.exclusive and fs.budget is None
    (coupon,) = merchant.product_coupons
    assert (coupon.id, coupon.type, coupon.percent, coupon.max_discount) == (
        "coupon",
        "product_coupon",
        20.0,
        5.0,
    )


def test_product_coupons_share_the_id_space_of_promotions():
    with pytest.raises(CatalogError, match="duplicate promotion ids"):
        parse_merchant(
            "m",
            config(
                promotions=[
                    {"id": "x", "type": "free_shipping"},
                    {"id": "x", "type": "product_coupon", "percent": 10},
                ]
            ),
        )


@pytest.mark.parametrize(
    ("merchant_config", "message"),
    [
        (config(margin_rate=0), "merchants.m.margin_rate: expected a number > 0, got 0"),
        (config(margin_rate=1.5), "merchants.m.margin_rate: expected a number <= 1, got 1.5"),
        (config(margin_rate="30%"), "merchants.m.margin_rate: expected a number, got '30%'"),
        (
            config(margin_rate=0.3, min_margin_rate=0.5),
            "merchants.m.min_margin_rate: must be between 0 and 0.3, got 0.5",
        ),
        (config(offer_ttl_hours=0), "merchants.m.offer_ttl_hours: expected a number > 0"),
        (config(deep_discount_depth=0), "deep_discount_depth: expected a number > 0, got 0"),
        (config(deep_discount_cost=2), "deep_discount_cost: expected a number <= 1, got 2"),
        (
            config(promotions=[{"id": "c", "type": "product_coupon"}]),
            "promotions[0].percent: must be between 0 and 100 for product_coupon",
        ),
        (promo(budget=-1), "merchants.m.promotions[0].budget: expected a number >= 0, got -1"),
        (promo(budget="lots"), "promotions[0].budget: expected a number, got 'lots'"),
        (promo(max_discount=0), "promotions[0].max_discount: expected a number > 0, got 0"),
        (promo(max_per_customer=0), "promotions[0].max_per_customer: expected a number >= 1"),
        (promo(max_per_customer=1.5), "max_per_customer: expected an integer, got 1.5"),
        (promo(max_per_customer=True), "max_per_customer: expected an integer, got True"),
        (promo(per_customer_days=0), "promotions[0].per_customer_days: expected a number > 0"),
        (promo(exclusive="yes"), "promotions[0].exclusive: expected true or false, got 'yes'"),
        (promo(group=3), "promotions[0].group: expected a string, got 3"),
    ],
)
def test_policy_field_errors_name_the_field(merchant_config, message):
    with pytest.raises(CatalogError) as info:
        parse_merchant("m", merchant_config)
    assert message in str(info.value)


def test_budget_zero_is_allowed_and_null_limits_mean_none():
    merchant = parse_merchant("m", promo(budget=0, max_discount=None, max_per_customer=None))
    (p,) = merchant.promotions
    assert (p.budget, p.max_discount, p.max_per_customer) == (0.0, None, None)
