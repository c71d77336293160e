"""The promotion decision log, and ``nextbest promo-retrain`` (rebuild the bandit from it).

Log format (what ``nextbest report``, ``nextbest ope`` and ``nextbest promo-retrain`` read):
JSON Lines, one record per line, each a ``DecisionRecord`` or a ``RewardRecord`` exactly as on
the decisions and rewards topics (``schemas/json/decisions.v1.json``, ``rewards.v1.json``); the
``record`` field (``"decision"`` / ``"reward"``) tells them apart. A dump of each topic as JSON
Lines of record values works as is, several files can be given, and blank lines are skipped.
Records are deduplicated by ``decision_id`` (the topics are at-least-once). Decision records
of repeats (``repeat_of`` set: a cart change that repeated its cart's decision; no reward, no
options) are left out: the report counts decisions, OPE and retraining weigh decisions joined to
their rewards, and a repeat is none of them.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from pathlib import Path

from streams.promotion.bandit import BanditChooser
from streams.promotion.rewards import learnable


class LogError(ValueError):
    """A log line that is not a decision or reward record."""


def read_log(paths: Iterable[Path]) -> tuple[list[dict], list[dict]]:
    """Decision and reward records of the files, deduplicated by decision id, in file order;
    repeats (``repeat_of``) left out."""
    decisions: dict[str, dict] = {}
    rewards: dict[str, dict] = {}
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    kind = record.get("record")
                    decision_id = record["decision_id"]
                except (json.JSONDecodeError, AttributeError, KeyError) as exc:
                    raise LogError(
                        f"{path}:{number}: not a decision or reward record: {exc}"
                    ) from None
                if kind == "decision":
                    if not record.get("repeat_of"):
                        decisions.setdefault(decision_id, record)
                elif kind == "reward":
                    rewards.setdefault(decision_id, record)
                else:
                    raise LogError(
                        f"{path}:{number}: record must be 'decision' or 'reward', got {kind!r}"
                    )
    return list(decisions.values()), list(rewards.values())


def retrain(rewards: Iterable[dict], chooser: BanditChooser | None = None) -> BanditChooser:
    """A bandit rebuilt from learnable rewards, in the order they closed."""
    chooser = chooser or BanditChooser()
    for reward in sorted(rewards, key=lambda r: (r["closed_at"], r["decision_id"])):
        if learnable(reward) and reward["policy"] == chooser.name:
            chooser.learn(reward)
    return chooser


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="nextbest promo-retrain",
        description="Rebuild the promotion bandit's state from a decision log ("
        + __doc__.split("\n")[0]
        + ")",
    )
    parser.add_argument("--log", type=Path, nargs="+", required=True, help="JSON Lines log file(s)")
    parser.add_argument("--out", type=Path, required=True, help="bandit state JSON to write")
    args = parser.parse_args(argv)
    _, rewards = read_log(args.log)
    chooser = retrain(rewards)
    state = {"bandit": chooser.state_dict()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(state) + "\n")
    for merchant, model in chooser.models.items():
        arms = ", ".join(f"{arm} {a.n}" for arm, a in sorted(model.arms.items()))
        print(f"{merchant}: {model.updates} rewards learned ({arms})")
    print(f"wrote {args.out}")
    return 0
