"""What counts as a product, and how much of an order the customer state keeps.

One rule for the replay, the worker's customer state, model training and model serving, so
the next-purchase model sees the same input in training and in the stream:

- a product is a stock code that starts with five digits or ``DCGS`` (UCI Online Retail);
  postage (``POST``, ``DOT``), manual adjustments (``M``, ``D``, ``S``, ``B``), fees
  (``AMAZONFEE``, ``BANK CHARGES``), ``C2``, ``CRUK``, ``PADS`` and ``gift_*`` vouchers are not.
  That is the default rule; a merchant can set its own (``product_pattern`` in the merchants
  file, `product_rule`): a regular expression matched at the start of the id, ignoring case;
- ids are compared upper-cased and stripped;
- an order keeps its first ``MAX_ORDER_PRODUCTS`` distinct products;
- a customer keeps the most recent orders, at most ``MAX_ORDERS`` of them and at most
  ``MAX_HISTORY_PRODUCTS`` product ids in all (`orders_to_keep`), so a record stays small
  however big the orders of a wholesale customer are.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from functools import lru_cache

PRODUCT_CODE = r"^(?:\d{5}|DCGS)"
_PRODUCT = re.compile(PRODUCT_CODE, re.IGNORECASE)
MAX_ORDERS = 50
MAX_ORDER_PRODUCTS = 250
MAX_HISTORY_PRODUCTS = 1000


def normalize_product(product_id: str) -> str:
    return str(product_id).strip().upper()


@lru_cache(maxsize=256)
def product_rule(pattern: str | None = None) -> re.Pattern[str]:
    """The compiled rule for ``pattern`` (None: the UCI stock-code rule), matched with
    ``re.match`` (anchored at the start; end it with ``$`` for the whole id), ignoring case.

    Raises ValueError for anything that is not a non-empty, valid regular expression.
    """
    if pattern is None:
        return _PRODUCT
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"expected a non-empty regular expression, got {pattern!r}")
    try:
        return re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise ValueError(f"{pattern!r} is not a valid regular expression: {exc}") from None


Rule = re.Pattern[str] | str | None
"""A compiled rule (`product_rule`), or its pattern; None: the UCI stock-code rule."""


def is_product(product_id: str, rule: Rule = _PRODUCT) -> bool:
    if not isinstance(rule, re.Pattern):
        rule = product_rule(rule)
    return rule.match(normalize_product(product_id)) is not None


def order_products(product_ids: Iterable[str], rule: Rule = _PRODUCT) -> list[str]:
    """An order's distinct products (by ``rule``), normalised, in order of appearance, capped."""
    if not isinstance(rule, re.Pattern):
        rule = product_rule(rule)
    kept: dict[str, None] = {}
    for product_id in product_ids:
        if is_product(product_id, rule):
            kept[normalize_product(product_id)] = None
            if len(kept) == MAX_ORDER_PRODUCTS:
                break
    return list(kept)


def orders_to_keep(sizes: Sequence[int]) -> int:
    """How many of the most recent orders to keep, given each order's product count (oldest
    first): the longest suffix within ``MAX_ORDERS`` orders and ``MAX_HISTORY_PRODUCTS`` ids.

    Applied after every new order, it keeps the same orders as applied once to the whole
    history, which is what lets training reproduce the worker's state from a file.
    """
    total = kept = 0
    for size in reversed(sizes[-MAX_ORDERS:]):
        if kept and total + size > MAX_HISTORY_PRODUCTS:
            break
        total += size
        kept += 1
    return kept
