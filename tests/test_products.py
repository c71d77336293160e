"""What counts as a product: the UCI stock-code rule by default, a merchant's own pattern."""

from __future__ import annotations

import pytest

from models.next_purchase.encoding import EncoderConfig, Vocab, encode_history
from models.next_purchase.loading import load_orders
from streams.merchants.catalog import (
    DEFAULT_MERCHANTS,
    CatalogError,
    load_merchants,
    parse_merchant,
)
from streams.state import customer_state
from streams.state.products import PRODUCT_CODE, is_product, order_products, product_rule

T0 = 1_291_193_160.0
LINES = ("85123A", "POST", "sku-17", "SKU-18X", "DCGS0070", "gift_0001_20", " 22423 ")


def order_event(products: tuple[str, ...], event_id: str = "o1") -> dict:
    return {
        "event_id": event_id,
        "event_type": "order",
        "merchant_id": "m",
        "customer_id": "c1",
        "order_id": event_id,
        "_ts": T0,
        "lines": [{"product_id": p, "quantity": 1, "unit_price": 1.0} for p in products],
        "total": float(len(products)),
        "currency": "EUR",
    }


def test_default_rule_is_the_uci_stock_code_rule():
    assert product_rule() is product_rule(None)
    assert product_rule().pattern == PRODUCT_CODE
    assert order_products(LINES) == ["85123A", "DCGS0070", "22423"]
    assert not is_product("POST") and not is_product("gift_0001_20")


def test_a_pattern_of_the_merchants_own():
    rule = product_rule(r"^SKU-\d+$")
    assert order_products(LINES, rule) == ["SKU-17"]  # ignoring case; "$": the whole id
    assert is_product("Sku-1", rule) and not is_product("85123A", rule)
    assert order_products(LINES, product_rule("SKU-")) == ["SKU-17", "SKU-18X"]  # a prefix


@pytest.mark.parametrize("pattern", ["([", "", "*x"])
def test_a_bad_pattern_is_a_clear_error(pattern):
    with pytest.raises(ValueError, match="regular expression"):
        product_rule(pattern)


def test_merchant_config_default_and_own_pattern():
    shop = load_merchants(DEFAULT_MERCHANTS)["uci-gift-shop"]
    assert shop.options.product_pattern is None
    assert shop.options.products is product_rule()
    own = parse_merchant("m", {"currency": "EUR", "product_pattern": "^SKU-"})
    assert own.options.product_pattern == "^SKU-"
    assert own.options.products.match("SKU-1") and not own.options.products.match("85123A")


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("(unclosed", r"merchants\.m\.product_pattern: '\(unclosed' is not a valid regular"),
        ("", r"merchants\.m\.product_pattern: expected a non-empty regular expression"),
        (["^A"], r"merchants\.m\.product_pattern: expected a regular expression \(a string\)"),
    ],
)
def test_bad_product_pattern_rejects_the_merchant(pattern, message):
    with pytest.raises(CatalogError, match=message):
        parse_merchant("m", {"currency": "EUR", "product_pattern": pattern})


def test_order_handling_keeps_the_products_of_the_merchants_rule():
    uci = customer_state.new_state()
    assert customer_state.apply_event(uci, "orders", order_event(LINES))
    assert uci["orders"][0][3] == ["85123A", "DCGS0070", "22423"]

    own = parse_merchant("m", {"currency": "EUR", "product_pattern": r"^SKU-\d+$"})
    state = customer_state.new_state()
    assert customer_state.apply_event(state, "orders", order_event(LINES), own.options.products)
    assert state["orders"][0][3] == ["SKU-17"]
    # An order with no product by the merchant's rule is counted but keeps no history.
    no_product = order_event(("85123A", "POST"), "o2")
    customer_state.apply_event(state, "orders", no_product, own.options.products)
    assert len(state["orders"]) == 1 and state["rfm"]["frequency"] == 2


def test_training_reads_the_same_rule(tmp_path):
    """Loader and encoder take the merchant's rule; the encoder's default stays UCI."""
    retail = tmp_path / "retail.csv"
    retail.write_text(
        "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
        "1,SKU-1,a,1,2011-01-01 10:00,1.0,7,UK\n"
        "1,POST,postage,1,2011-01-01 10:00,1.0,7,UK\n"
        "2,sku-2,b,1,2011-01-08 10:00,1.0,7,UK\n"
        "2,85123A,c,1,2011-01-08 10:00,1.0,7,UK\n"
    )
    orders, report = load_orders(retail, r"^SKU-\d+$")
    assert orders == {"7": [(1293876000.0, ["SKU-1"]), (1294480800.0, ["SKU-2"])]}
    assert (report.kept, report.non_product) == (2, 2)
    uci, _ = load_orders(retail)
    assert [products for _, products in uci["7"]] == [["85123A"]]

    vocab = Vocab.build(orders)
    own = encode_history(orders["7"], vocab, EncoderConfig(product_pattern=r"^SKU-\d+$"))
    assert own.n_orders == 2 and sorted(own.repeat_items) == [1, 2]
    assert encode_history(orders["7"], vocab, EncoderConfig()).n_orders == 0  # UCI: none
