"""The limits of the input contract: what a value must stay within to be representable and
sane (plain constants, no Faust: ``streams`` reads them too). ``schemas.events`` puts them on
the Records' fields; the validator and the JSON Schemas enforce them."""

from __future__ import annotations

ID_MAX_LENGTH = 256  # event, merchant, customer, session, order, offer, notification ids
PRODUCT_ID_MAX_LENGTH = 64  # stock codes, SKUs, GTINs, UUIDs; kept by the hundred in state
TEXT_MAX_LENGTH = 1024  # free text: search queries, line descriptions
URL_MAX_LENGTH = 2048
NAME_MAX_LENGTH = 256  # categories
ADDRESS_MAX_LENGTH = 512  # e-mail address, phone number, push token
TIME_ZONE_MAX_LENGTH = 64
MAX_LINES = 1000  # lines per event
MAX_QUANTITY = 1_000_000  # units on one line, either sign
MAX_AMOUNT = 1e9  # money, in the currency's units, either sign
#: RFC 3339 ``date-time`` with an offset (``Z`` or ``+01:00``), seconds required, years
#: 2000..2099 as written. ``[0-9]``, not ``\d`` (Python's ``\d`` takes any Unicode digit); the
#: final ``(?!\n)`` keeps Python's ``$`` from accepting a trailing newline, as ECMA-262's does not.
EVENT_TIME_PATTERN = (
    r"^20[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?"
    r"(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$(?!\n)"
)
