"""Take windows of engagement actions, joined in the customer's state, and their rewards.

A showing of an action opens a window in ``state["engagement"]["open"]``: the cart decision
that put the action first on a record (with its ranking's propensity), or an ``action_shown``
feedback event for an action no open window covers: under the ranking's id with its
propensity when it carries those of a ``GET /next-best-actions`` answer (``ranking_id``,
``propensity``), else under the event's id, propensity unknown (shown by the shop on its own).
An ``action_taken`` within ``take_window_s`` of the showing closes the action's window with
``taken: true``; a window whose end passed (any later event of the customer moves the clock)
closes with ``taken: false``, a dismissal included. Each window closes once: a reward's id is
its showing's id, so learning it twice is a no-op (`TakeModel.update`), and the state keeps at
most ``MAX_OPEN`` windows (the oldest closes, not taken).

Window: ``[ranking_id, action_id, shown_at, ends_at, propensity | None, ranking mode,
features]``.
"""

from __future__ import annotations

from streams.state.customer_state import MAX_OPEN_WINDOWS as MAX_OPEN
from streams.state.customer_state import engagement_state


def open_window(
    state: dict,
    ranking_id: str,
    action_id: str,
    ts: float,
    window_s: float,
    features: list[float],
    propensity: float | None,
    mode: str,
) -> list[dict]:
    """Open a take window for ``action_id`` unless one is open; returns rewards of windows it
    pushed out (not taken)."""
    windows = engagement_state(state)["open"]
    if any(w[1] == action_id for w in windows):
        return []
    kept = [round(x, 4) for x in features]  # ~150 bytes a window in the customer's record
    windows.append([ranking_id, action_id, ts, ts + window_s, propensity, mode, kept])
    closed = []
    while len(windows) > MAX_OPEN:
        closed.append(_reward(windows.pop(0), taken=False, closed_at=ts, reason="evicted"))
    return closed


def take(state: dict, action_id: str, ts: float) -> list[dict]:
    """An ``action_taken`` at ``ts``: the action's open window, if ``ts`` falls in it, closes
    as taken."""
    if "engagement" not in state:
        return []
    windows = state["engagement"]["open"]
    for i, window in enumerate(windows):
        if window[1] == action_id and window[2] <= ts <= window[3]:
            del windows[i]
            return [_reward(window, taken=True, closed_at=ts, reason="taken")]
    return []


def close_due(state: dict, ts: float) -> list[dict]:
    """Windows that ended before ``ts``: closed, not taken."""
    if "engagement" not in state:
        return []
    windows = state["engagement"]["open"]
    due = [w for w in windows if w[3] < ts]
    if not due:
        return []
    windows[:] = [w for w in windows if w[3] >= ts]
    return [_reward(w, taken=False, closed_at=ts, reason="window_closed") for w in due]


def _reward(window: list, taken: bool, closed_at: float, reason: str) -> dict:
    ranking_id, action_id, shown_at, _, propensity, mode, features = window
    return {
        "reward_id": f"{ranking_id}|{action_id}",
        "action_id": action_id,
        "taken": taken,
        "shown_at": shown_at,
        "closed_at": closed_at,
        "propensity": propensity,
        "ranking": mode,
        "features": features,
        "reason": reason,
    }
