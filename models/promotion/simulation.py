"""``nextbest simulate``: the promotion policy against simulated customers, offline (no Kafka).

For each seed one population (``models.promotion.simulator``) lives ``weeks`` weeks under each
policy, with the same common random numbers: no offer, every single static offer of the simulated
catalog (free shipping, 5/10/15/20% off, the threshold nudge, the product coupon) and the learned
bandit (``streams.promotion.policy``, Thompson sampling, learning weekly from the rewards the reward
join produces). Every policy runs through the same code an agent would: customer state from events,
the `PromotionPolicy` with its guard rails and decision records, offer feedback and orders fed to
``streams.promotion.rewards``.

Figures: 10-week incremental profit per customer over no offer (the simulator's realised
profit, common random numbers), customers given a deep discount (depth >= 15% of the basket),
and the bars of the issue: learned >= 1.2 x the best static offer, >= 1.5 x "always 20% off",
and fewer deep-discounted customers than the best static offer. Then off-policy evaluation
(``models.promotion.ope``) from the learned run's decision log, for every static policy, no offer
and the final greedy bandit, against the simulator's true value of each on the logged carts.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from models.promotion import ope
from models.promotion.simulator import (
    Calibration,
    Population,
    SimConfig,
    Simulator,
    calibrate,
    sim_merchant,
)
from streams.decisions import DecisionContext
from streams.merchants.catalog import Merchant
from streams.promotion import rewards
from streams.promotion.actions import no_offer
from streams.promotion.bandit import BanditChooser, BanditConfig, Choice, ChoiceInput
from streams.promotion.experiments import Arm, Experiment
from streams.promotion.objective import ObjectiveConfig
from streams.promotion.policy import PolicyDecision, PromotionPolicy
from streams.state import customer_state

DEEP = 0.15
BATCH = 500
STATIC = (
    "free_shipping",
    "percent_off:five-off",
    "percent_off:ten-off",
    "percent_off:fifteen-off-300",
    "percent_off:twenty-off",
    "threshold_nudge",
    "product_coupon",
)
ALWAYS_20 = "percent_off:twenty-off"


@dataclass
class RunResult:
    name: str
    profit: np.ndarray  # per customer, over the run
    weekly: np.ndarray  # per week, all customers
    deep: np.ndarray  # per customer: was sent at least one deep discount
    offers: Counter = field(default_factory=Counter)  # sent offers by action kind
    decisions: int = 0
    reward_profit: float = 0.0  # what the reward join attributed, for the consistency check
    future_loss: float = 0.0  # coupons' lost future sales: in ``profit``, not in rewards
    records: list[dict] = field(default_factory=list)
    rewards: list[dict] = field(default_factory=list)
    truth: dict[str, dict[str, float]] = field(default_factory=dict)
    policy: PromotionPolicy | None = None


def _cart_event(key: str, week: int, ts: float, value: float) -> dict:
    n = int(min(max(round(value / 23.0), 1), 50))  # Online Retail: ~£23 per invoice line
    price = round(value / n, 2)
    return {
        "event_id": f"{key}-w{week}-cart",
        "event_type": "cart_add",
        "lines": [
            {"product_id": f"S{k:02d}", "quantity": 1, "unit_price": price} for k in range(n)
        ],
        "cart_value": value,
        "currency": "GBP",
        "_ts": ts,
    }


def _views(key: str, week: int, ts: float, count: int) -> list[dict]:
    """Product views in the session before the cart, a minute apart."""
    return [
        {
            "event_id": f"{key}-w{week}-view{k}",
            "event_type": "product_view",
            "product_id": f"V{k:02d}",
            "_ts": ts - 60.0 * (count - k),
        }
        for k in range(min(count, 20))
    ]


class OracleChooser:
    """Knows the simulator's truth: the action with the best expected profit now (myopic).
    Not a policy anyone can run; it shows how much value the customers' responses hold."""

    name = "oracle"

    def __init__(self, sim: Simulator, carts: dict[str, tuple[int, int]]) -> None:
        self.sim = sim
        self.carts = carts  # cart event id -> (customer index, week)

    def choose(self, row: ChoiceInput, rng: np.random.Generator) -> Choice:
        i, week = self.carts[row.context.cart_event_id]
        values = [self.sim.expected_profit(i, week, a) for a in row.actions]
        best = int(np.argmax(values))
        return Choice(best, 1.0, tuple(float(k == best) for k in range(len(values))), "oracle")


def run_policy(
    calibration: Calibration,
    config: SimConfig,
    variant: str,
    experiment: Experiment | None = None,
    objective: ObjectiveConfig | None = None,
    keep_log: bool = False,
    bandit: BanditConfig | None = None,
    deep_discount_cost: float | None = None,
) -> RunResult:
    """``config.weeks`` weeks of one population under one policy variant (``bandit`` and
    ``deep_discount_cost``: the learned policy's settings, None for the defaults)."""
    merchant = sim_merchant(margin_rate=config.margin_rate, deep_discount_cost=deep_discount_cost)
    sim = Simulator(Population.draw(calibration, config), config, merchant)
    n = len(sim.pop.keys)
    signals: dict[str, object] = {}
    experiment = experiment or Experiment(id="sim", holdout=0.0, arms=(Arm("all", 1.0, variant),))
    cart_index: dict[str, tuple[int, int]] = {}
    variants: dict = {"oracle": OracleChooser(sim, cart_index)}
    if objective is not None or bandit is not None:
        variants["bandit"] = BanditChooser(bandit, objective)
    policy = PromotionPolicy(
        experiment,
        variants=variants,
        default_variant=variant,
        objective=objective,
        signals=lambda contexts: [signals.get(c.cart_event_id) for c in contexts],
        seed=config.seed,
    )
    result = RunResult(
        variant, np.zeros(n), np.zeros(config.weeks), np.zeros(n, dtype=bool), policy=policy
    )
    pending: set[int] = set()
    for week in range(config.weeks):
        start = sim.week_start(week)
        carts = sorted(
            (start + sim.pop.cart_time[i, week], i) for i in range(n) if sim.has_cart(i, week)
        )
        redeemed_depth = np.zeros(n)
        for b in range(0, len(carts), BATCH):
            batch = carts[b : b + BATCH]
            contexts = []
            for ts, i in batch:
                key = f"{merchant.id}:c:{sim.pop.keys[i]}"
                value = float(sim.pop.cart_value[i, week])
                for view in _views(key, week, ts, int(sim.pop.views[i, week])):
                    customer_state.apply_event(sim.states[i], "clickstream", view)
                event = _cart_event(key, week, ts, value)
                customer_state.apply_event(sim.states[i], "cart", event)
                signals[event["event_id"]] = sim.signals(i, week)
                cart_index[event["event_id"]] = (i, week)
                contexts.append(
                    DecisionContext(
                        merchant, key, sim.states[i], value, "GBP", ts, event["event_id"]
                    )
                )
            decisions = policy.decide(contexts)
            for (ts, i), ctx, decision in zip(batch, contexts, decisions, strict=True):
                depth = _play(sim, result, i, week, ts, ctx, decision, keep_log)
                redeemed_depth[i] = depth
                pending.add(i)
        sim.end_week(redeemed_depth)
        _close(sim, result, policy, pending, start + 7 * 86400.0, keep_log)
    _close(sim, result, policy, pending, sim.week_start(config.weeks) + 60 * 86400.0, keep_log)
    return result


def _play(
    sim: Simulator,
    result: RunResult,
    i: int,
    week: int,
    ts: float,
    ctx: DecisionContext,
    decision: PolicyDecision,
    keep_log: bool,
) -> float:
    """Apply one decision to the customer: response, events, accounting. Returns the depth of
    a redeemed discount (0 if none)."""
    state, record, action = sim.states[i], decision.record, decision.action
    assert record is not None and action is not None  # one cart per customer-week: no repeats
    result.decisions += 1
    if keep_log:
        result.records.append(record)
        result.truth[record["decision_id"]] = {
            a.id: sim.expected_profit(i, week, a, future_loss=False) for a in decision.options or []
        }
    sent = decision.offer is not None
    outcome = sim.respond(i, week, action if sent else no_offer(ctx.cart_value))
    result.profit[i] += outcome.profit
    result.future_loss += outcome.future_loss
    result.weekly[week] += outcome.profit
    key = ctx.customer_key
    if sent:
        offer = decision.offer
        generation = state["cart"]["generation"]
        customer_state.record_offer(state, generation, offer.key, record["offer_id"], ts)
        result.offers[action.kind] += 1
        result.deep[i] |= action.is_deep(DEEP)
        opened = bool(outcome.redeemed or sim.pop.u_open[i, week] < sim.config.open_rate)
        kinds = (
            ["offer_delivered"] + ["offer_opened"] * opened + ["offer_redeemed"] * outcome.redeemed
        )
        for k, kind in enumerate(kinds):
            feedback = {
                "event_id": f"{key}-w{week}-{kind}",
                "event_type": kind,
                "offer_id": record["offer_id"],
                "_ts": ts + 60.0 * (k + 1),
            }
            customer_state.apply_event(state, "feedback", feedback)
            rewards.on_feedback(state, feedback, result.policy.ledgers if result.policy else None)
    if outcome.purchased:
        lines = [
            {"product_id": line[0], "quantity": line[1], "unit_price": line[2]}
            for line in state["cart"]["lines"]
        ]
        if outcome.redeemed and action.kind == "product_coupon":
            price = round(action.basket - action.cart_value, 2)
            lines.append({"product_id": action.product_id, "quantity": 1, "unit_price": price})
        order = {
            "event_id": f"{key}-w{week}-order",
            "event_type": "order",
            "order_id": f"{key}-w{week}",
            "lines": lines,
            "total": outcome.paid,
            "currency": "GBP",
            "_ts": ts + 3600.0,
        }
        customer_state.apply_event(state, "orders", order)
        rewards.on_order(state, order)
    end = {
        "event_id": f"{key}-w{week}-end",
        "event_type": "checkout" if outcome.purchased else "cart_clear",
        "lines": [],
        "cart_value": 0.0,
        "currency": "GBP",
        "_ts": ts + 3600.0 * (1 if outcome.purchased else 24),
    }
    customer_state.apply_event(state, "cart", end)
    return outcome.depth if outcome.redeemed else 0.0


def _close(
    sim: Simulator,
    result: RunResult,
    policy: PromotionPolicy,
    pending: set[int],
    now: float,
    keep_log: bool,
) -> None:
    closed = []
    for i in sorted(pending):
        closed += rewards.close_due(sim.states[i], now)
        if rewards.next_due(sim.states[i]) is None:
            pending.discard(i)
    policy.learn(closed)
    result.reward_profit += sum(r["profit"] for r in closed)
    if keep_log:
        result.rewards += closed


# --- off-policy evaluation of the learned run's log -----------------------------------------


def ope_check(result: RunResult, candidates: dict[str, ope.Candidate]) -> list[dict]:
    """OPE of each candidate from the run's log, with the simulator's true value per candidate."""
    log = ope.load_rows(result.records, result.rewards)
    rows = []
    model = ope.RewardModel.fit(log, folds=2, seed=0)
    for name, candidate in candidates.items():
        probabilities = [candidate(row) for row in log]
        truth = float(
            np.mean(
                [
                    sum(
                        p * result.truth[row.decision_id][a]
                        for p, a in zip(probs, row.options, strict=True)
                    )
                    for row, probs in zip(log, probabilities, strict=True)
                ]
            )
        )
        estimates = ope.evaluate(log, probabilities, model)
        rows.append(
            {
                "policy": name,
                "true": truth,
                **{
                    f"{e.method}": {
                        "value": e.value,
                        "low": e.low,
                        "high": e.high,
                        "covers": bool(e.low <= truth <= e.high),
                    }
                    for e in estimates
                },
            }
        )
    return rows


# --- the benchmark ---------------------------------------------------------------------------


@dataclass
class SimulateConfig:
    sim: SimConfig = field(default_factory=SimConfig)
    seeds: tuple[int, ...] = (0, 1, 2)
    out: Path = Path("var/simulate")
    dependency_cost: float | None = None  # None: the policy's default
    deep_discount_cost: float | None = None  # None: the merchant's default
    uniform_exploration: bool = False  # explore uniformly (the policy explores cheap offers more)
    experiment: bool = False  # also run a holdout + A/B experiment (first seed) for the report


def simulate(config: SimulateConfig, calibration: Calibration | None = None) -> dict:
    calibration = calibration or calibrate()
    objective = (
        ObjectiveConfig(dependency_cost=config.dependency_cost)
        if config.dependency_cost is not None
        else None
    )
    bandit = BanditConfig(explore_depth_scale=None) if config.uniform_exploration else None
    learned_settings = {
        "objective": objective,
        "bandit": bandit,
        "deep_discount_cost": config.deep_discount_cost,
    }
    seeds = []
    for seed in config.seeds:
        sim = replace(config.sim, seed=seed)
        started = time.perf_counter()
        base = run_policy(calibration, sim, "static:none")
        statics = {name: run_policy(calibration, sim, f"static:{name}") for name in STATIC}
        learned = run_policy(calibration, sim, "bandit", keep_log=True, **learned_settings)
        oracle = run_policy(calibration, sim, "oracle")
        n = sim.customers
        incremental = {
            name: float((r.profit.sum() - base.profit.sum()) / n) for name, r in statics.items()
        }
        incremental["learned"] = float((learned.profit.sum() - base.profit.sum()) / n)
        incremental["oracle"] = float((oracle.profit.sum() - base.profit.sum()) / n)
        deep = {name: int(r.deep.sum()) for name, r in statics.items()}
        deep["learned"] = int(learned.deep.sum())
        deep["oracle"] = int(oracle.deep.sum())
        best = max(STATIC, key=lambda name: incremental[name])
        chooser = learned.policy.variants["bandit"]
        candidates = {"none": ope.static("none")}
        candidates.update({name: ope.static(name) for name in STATIC})
        candidates["greedy-final"] = ope.greedy(chooser.model("sim-shop"))
        seeds.append(
            {
                "seed": seed,
                "customers": n,
                "decisions": learned.decisions,
                "no_offer_profit_per_customer": float(base.profit.sum() / n),
                "incremental_per_customer": incremental,
                "deep_discount_customers": deep,
                "best_static": best,
                "learned_offers": dict(learned.offers),
                "learned_weekly_incremental_per_customer": [
                    round(float(v), 3) for v in (learned.weekly - base.weekly) / n
                ],
                "reward_join_profit": learned.reward_profit,
                "simulated_profit": float(learned.profit.sum()),
                "ope": ope_check(learned, candidates),
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
        if seed == config.seeds[0]:
            config.out.mkdir(parents=True, exist_ok=True)
            _write_log(config.out / "learned-log.jsonl", learned)
            if config.experiment:
                run = run_policy(
                    calibration, sim, "bandit", EXPERIMENT, keep_log=True, **learned_settings
                )
                _write_log(config.out / "experiment-log.jsonl", run)
        print(_seed_line(seeds[-1]), flush=True)
    summary = _summary(seeds)
    summary["config"] = {**asdict(config.sim), "seeds": list(config.seeds)}
    summary["config"]["dependency_cost"] = (
        config.dependency_cost
        if config.dependency_cost is not None
        else ObjectiveConfig().dependency_cost
    )
    summary["config"]["deep_discount_cost"] = (
        config.deep_discount_cost
        if config.deep_discount_cost is not None
        else Merchant.deep_discount_cost
    )
    summary["config"]["exploration"] = "uniform" if config.uniform_exploration else "by depth"
    summary["calibration"] = calibration.sources
    summary["seeds"] = seeds
    return summary


#: The experiment of ``--experiment``: a 10% holdout, the learned policy and the rules.
EXPERIMENT = Experiment(
    id="sim-ab", holdout=0.10, arms=(Arm("learned", 1.0, "bandit"), Arm("rules", 1.0, "rules"))
)


def _write_log(path: Path, result: RunResult) -> None:
    with open(path, "w") as f:
        for record in result.records + result.rewards:
            f.write(json.dumps(record) + "\n")


def _seed_line(seed: dict) -> str:
    inc = seed["incremental_per_customer"]
    return (
        f"seed {seed['seed']}: learned {inc['learned']:+.2f}/customer, best static "
        f"{seed['best_static']} {inc[seed['best_static']]:+.2f}, always 20% {inc[ALWAYS_20]:+.2f} "
        f"({seed['decisions']} learned decisions, {seed['seconds']} s)"
    )


def _summary(seeds: list[dict]) -> dict:
    names = [*STATIC, "learned", "oracle"]
    mean = {n: float(np.mean([s["incremental_per_customer"][n] for s in seeds])) for n in names}
    deep = {n: float(np.mean([s["deep_discount_customers"][n] for s in seeds])) for n in names}
    best = max(STATIC, key=lambda n: mean[n])
    ratio_best = mean["learned"] / mean[best] if mean[best] > 0 else float("inf")
    ratio_20 = mean["learned"] / mean[ALWAYS_20] if mean[ALWAYS_20] > 0 else None
    covers = {
        method: [row[method]["covers"] for s in seeds for row in s["ope"]] for method in ope.METHODS
    }
    return {
        "mean_incremental_per_customer": mean,
        "mean_deep_discount_customers": deep,
        "best_static": best,
        "ratio_learned_vs_best_static": ratio_best,
        "ratio_learned_vs_always_20": ratio_20,
        "bar_best_static": bool(mean["learned"] >= 1.2 * mean[best]),
        "bar_always_20": bool(mean["learned"] >= 1.5 * mean[ALWAYS_20]),
        "bar_deep": bool(deep["learned"] < deep[best]),
        "ope_coverage": {m: f"{sum(c)}/{len(c)}" for m, c in covers.items()},
    }


def print_ope_rows(rows: list[dict]) -> None:
    """`ope_check`'s rows as a table: each estimate [95% CI] next to the true value, ``!``
    where the interval misses it."""
    print(f"{'candidate':<30} {'true':>8} " + " ".join(f"{m:>26}" for m in ope.METHODS))
    for row in rows:
        cells = []
        for m in ope.METHODS:
            e = row[m]
            mark = "" if e["covers"] else " !"
            cells.append(f"{e['value']:7.2f} [{e['low']:6.2f},{e['high']:6.2f}]{mark:>2}")
        print(f"{row['policy']:<30} {row['true']:>8.2f} " + " ".join(f"{c:>26}" for c in cells))


def print_summary(summary: dict) -> None:
    mean = summary["mean_incremental_per_customer"]
    deep = summary["mean_deep_discount_customers"]
    n = summary["config"]["customers"]
    print(
        f"\n10-week incremental profit per customer over no offer (GBP), mean of seeds "
        f"{summary['config']['seeds']}, {n} customers each:"
    )
    print(f"{'policy':<30} {'incremental':>12} {'deep-discounted customers':>27}")
    for name in [*STATIC, "learned", "oracle"]:
        per_seed = ", ".join(
            f"{s['incremental_per_customer'][name]:+.2f}" for s in summary["seeds"]
        )
        label = "oracle (knows hidden truth)" if name == "oracle" else name
        print(f"{label:<30} {mean[name]:>+12.2f} {deep[name]:>27.0f}   ({per_seed})")
    best = summary["best_static"]
    print(f"\nbest static offer: {best}")
    print(
        f"learned / best static   = {summary['ratio_learned_vs_best_static']:.2f} "
        f"(bar >= 1.2: {'met' if summary['bar_best_static'] else 'NOT met'})"
    )
    ratio_20 = summary["ratio_learned_vs_always_20"]
    shown = f"{ratio_20:.2f}" if ratio_20 is not None else "n/a"
    note = f" (always 20% loses {-mean[ALWAYS_20]:.2f} per customer)" if ratio_20 is None else ""
    print(
        f"learned / always 20%    = {shown}{note} "
        f"(bar >= 1.5: {'met' if summary['bar_always_20'] else 'NOT met'})"
    )
    print(
        f"deep-discounted customers: learned {deep['learned']:.0f} vs best static "
        f"{deep[best]:.0f} (bar: fewer: {'met' if summary['bar_deep'] else 'NOT met'})"
    )
    print(
        "\nOff-policy evaluation from the learned run's log (seed "
        f"{summary['seeds'][0]['seed']}): estimate [95% CI] vs the simulator's true value, "
        "profit per decision"
    )
    print_ope_rows(summary["seeds"][0]["ope"])
    coverage = ", ".join(f"{m} {c}" for m, c in summary["ope_coverage"].items())
    print(f"\ntrue value inside the 95% CI, over all seeds and candidates: {coverage}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="nextbest simulate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--customers", type=int, default=SimConfig.customers)
    parser.add_argument("--weeks", type=int, default=SimConfig.weeks)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--habituation", type=float, default=SimConfig.habituation)
    parser.add_argument(
        "--margin",
        type=float,
        default=SimConfig.margin_rate,
        help="the simulated shop's gross margin rate",
    )
    parser.add_argument(
        "--dependency-cost",
        type=float,
        default=None,
        help="the policy's discount-dependency cost (default: the policy's)",
    )
    parser.add_argument(
        "--deep-discount-cost",
        type=float,
        default=None,
        help="the simulated shop's deep_discount_cost (default: the merchant default, 0.02)",
    )
    parser.add_argument(
        "--uniform-exploration",
        action="store_true",
        help="the learned policy explores all offers alike (default: cheap offers more)",
    )
    parser.add_argument("--out", type=Path, default=Path("var/simulate"))
    parser.add_argument(
        "--experiment",
        action="store_true",
        help="also run a 10%% holdout + learned/rules A/B test (first seed), for nextbest report",
    )
    args = parser.parse_args(argv)
    config = SimulateConfig(
        sim=SimConfig(
            customers=args.customers,
            weeks=args.weeks,
            habituation=args.habituation,
            margin_rate=args.margin,
        ),
        seeds=tuple(args.seeds),
        out=args.out,
        dependency_cost=args.dependency_cost,
        deep_discount_cost=args.deep_discount_cost,
        uniform_exploration=args.uniform_exploration,
        experiment=args.experiment,
    )
    summary = simulate(config)
    print_summary(summary)
    config.out.mkdir(parents=True, exist_ok=True)
    (config.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nwrote {config.out / 'summary.json'} and {config.out / 'learned-log.jsonl'}")
    return 0
