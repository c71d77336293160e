"""``GET /ready``: whether this worker can answer API calls now (Kubernetes' readiness probe).

Ready means: no rebalance in progress, the tables recovered for the current assignment, and
Faust's assignment (what `agents.web.api.Api.owner` forwards by) names an owner for every
partition of the customers table, this worker's own partitions under its own advertised URL.
The last check fails where two workers advertise one URL (their entries collapse into one), so
such a worker never turns ready.

Once ready, a worker stays ready through later rebalances (``settled``): every member of the
group rebalances together, so dropping them from the API Service then would refuse every call,
events too, which any worker accepts meanwhile; keyed calls answer 503 (retry) until the
rebalance ends.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from agents.runtime.app import NextbestApp


@dataclass(frozen=True)
class Readiness:
    ready: bool
    partitions: int  # partitions of the customers table this worker owns
    reason: str = ""  # why not, when not ready
    rebalancing: bool = False  # ready (settled before) while a rebalance runs


def readiness(
    *,
    rebalancing: bool,
    recovered: bool,
    partitions: int,
    owned: Collection[int],
    owners: Mapping[str, Collection[int]],
    url: str,
    settled: bool = False,
) -> Readiness:
    """``owned``: this worker's partitions in its own assignment; ``owners``: advertised URL ->
    partitions, the whole group's assignment as Faust's router knows it; ``url``: this worker's
    advertised URL; ``settled``: it was ready before."""
    count = len(owned)
    if settled and (rebalancing or not recovered):
        return Readiness(True, count, rebalancing=True)
    if rebalancing:
        return Readiness(False, count, "rebalancing")
    if not recovered:
        return Readiness(False, count, "recovering the tables")
    unowned = set(range(partitions)).difference(*owners.values())
    if unowned:
        return Readiness(False, count, f"no known owner for partitions {sorted(unowned)}")
    if set(owners.get(url, ())) != set(owned):
        return Readiness(
            False,
            count,
            f"the assignment gives {url} other partitions than this worker's: is its advertised "
            "URL (NEXTBEST_WEB_ADVERTISED_URL) unique?",
        )
    return Readiness(True, count)


def worker_readiness(nb: NextbestApp, settled: bool = False) -> Readiness:
    """`readiness` of the running worker, from its Faust app's state."""
    app = nb.app
    topic = nb.customers.changelog_topic.get_topic_name()
    return readiness(
        rebalancing=app.rebalancing,
        # actives_ready: turned off when a rebalance starts, on when its recovery completes
        # (recovery.completed is never cleared after the first one)
        recovered=app.tables.actives_ready and not app.tables.recovery.in_recovery,
        partitions=nb.settings.partitions,
        owned={tp.partition for tp in app.assignor.assigned_actives() if tp.topic == topic},
        owners={
            url: topics.get(topic, ())
            for url, topics in app.router.table_metadata(nb.customers.name).items()
        },
        url=str(app.conf.canonical_url),
        settled=settled,
    )
