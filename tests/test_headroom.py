"""The headroom check's quantity features: pure logic over a hand-made transactions frame."""

import numpy as np
import pandas as pd

from models.next_purchase.encoding import EncoderConfig, Vocab, encode_history
from models.next_purchase.headroom import QUANTITY_FEATURES, quantities, rows, units_by_order


def _lines() -> pd.DataFrame:
    day = 86400.0
    return pd.DataFrame(
        {
            "customer": ["c1", "c1", "c1", "c1", "c1", "c2"],
            "invoice": ["1", "1", "1", "2", "3", "4"],
            "product": ["85123A", "22423", "85123A", "85123A", "22423", "22423"],
            "quantity": [6.0, 2.0, 4.0, 12.0, 1.0, 3.0],
            # invoice 1's lines a minute apart: the order's time is its first line's
            "seconds": [day, day + 60, day + 60, 3 * day, 5 * day, 2 * day],
        }
    )


def _vocab() -> Vocab:
    return Vocab.build({"c1": [(86400.0, ["85123A", "22423"])], "c2": [(172800.0, ["22423"])]})


def test_units_are_summed_per_order_and_product() -> None:
    vocab = _vocab()
    units = units_by_order(_lines(), vocab)
    a, b = vocab.index["85123A"], vocab.index["22423"]
    assert units["c1"] == [
        (86400.0, {a: 10.0, b: 2.0}),
        (3 * 86400.0, {a: 12.0}),
        (5 * 86400.0, {b: 1.0}),
    ]
    assert units["c2"] == [(2 * 86400.0, {b: 3.0})]


def test_quantities_count_only_orders_before_the_moment() -> None:
    vocab = _vocab()
    units = units_by_order(_lines(), vocab)
    a, b = vocab.index["85123A"], vocab.index["22423"]
    feats = quantities(units, "c1", np.array([a, b, 0]), before=5 * 86400.0)
    assert feats.shape == (3, QUANTITY_FEATURES)
    np.testing.assert_allclose(
        feats[0], [np.log1p(22.0), np.log1p(12.0), np.log1p(11.0), 22.0 / 24.0], rtol=1e-6
    )
    np.testing.assert_allclose(
        feats[1], [np.log1p(2.0), np.log1p(2.0), np.log1p(2.0), 2.0 / 24.0], rtol=1e-6
    )
    assert not feats[2].any()  # never bought
    assert not quantities(units, "nobody", np.array([a]), before=1e12).any()


def test_rows_append_quantities_and_blank_them_for_new_products() -> None:
    vocab = _vocab()
    history = encode_history([(86400.0, ["85123A"])], vocab, EncoderConfig(), now=2 * 86400.0)
    units = np.ones((len(history.repeat_items), QUANTITY_FEATURES), np.float32)
    items, feats, labels = rows(history, {vocab.index["22423"]}, None, new=True, units=units)
    past = len(history.repeat_items)
    assert feats.shape[1] == history.repeat_feats.shape[1] + QUANTITY_FEATURES + 1  # + "new"
    assert (feats[:past, -QUANTITY_FEATURES - 1 : -1] == 1).all()
    assert not feats[past:, -QUANTITY_FEATURES - 1 : -1].any()
    assert labels[items.tolist().index(vocab.index["22423"])] == 1
