"""``GET /ready``'s decision (`agents.web.readiness.readiness`); the live endpoint is in
tests/test_scale_routing.py."""

from __future__ import annotations

import re

import pytest

from agents.web.readiness import Readiness, readiness

URL = "http://w1:6066"
SETTLED = {"http://w0:6066": [0, 3], URL: [1, 4], "http://w2:6066": [2, 5]}


def decide(**changes: object) -> Readiness:
    state = {
        "rebalancing": False,
        "recovered": True,
        "partitions": 6,
        "owned": [1, 4],
        "owners": SETTLED,
        "url": URL,
        **changes,
    }
    return readiness(**state)


def test_ready_once_assigned_and_recovered():
    assert decide() == Readiness(True, 2)


def test_a_worker_without_partitions_is_ready_when_every_partition_has_an_owner():
    """More workers than partitions: this one owns none, and forwards every request."""
    owners = {"http://w0:6066": [0, 1, 2], "http://w2:6066": [3, 4, 5], URL: []}
    assert decide(owned=[], owners=owners) == Readiness(True, 0)
    del owners[URL]  # Faust's map may leave the empty entry out
    assert decide(owned=[], owners=owners) == Readiness(True, 0)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"rebalancing": True}, "rebalancing"),
        ({"recovered": False}, "recovering the tables"),
        ({"owners": {}, "owned": []}, r"no known owner for partitions \[0, 1, 2, 3, 4, 5\]"),
        (
            {"owners": {"http://w0:6066": [0, 3], URL: [1, 4]}},
            r"no known owner for partitions \[2, 5\]",
        ),
        # three workers advertising one URL: Faust keeps one entry, another worker's partitions
        ({"owners": {URL: [0, 1, 2, 3, 4, 5]}}, "other partitions than this worker's: is its"),
        ({"owners": {**SETTLED, URL: [1, 4, 5]}}, "NEXTBEST_WEB_ADVERTISED_URL"),
    ],
)
def test_not_ready_says_why(changes, reason):
    state = decide(**changes)
    assert not state.ready
    assert state.partitions == len(changes.get("owned", [1, 4]))
    assert re.search(reason, state.reason), state.reason


@pytest.mark.parametrize("changes", [{"rebalancing": True}, {"recovered": False}])
def test_a_settled_worker_stays_ready_through_a_rebalance(changes):
    """Every member rebalances together: unready, they would all leave the API Service."""
    assert decide(**changes, settled=True) == Readiness(True, 2, rebalancing=True)
    assert not decide(**changes).ready  # before its first assignment: not yet


def test_a_settled_worker_with_a_shared_url_is_not_ready():
    assert not decide(owners={URL: [0, 1, 2, 3, 4, 5]}, settled=True).ready
