"""The promotion policy behind the agents' `Policy` protocol: experiments, guard rails, the
learned bandit and the decision log.

Per cart (``decide``), in batch order:

1. the customer's arm (``streams.promotion.experiments``: holdout or an A/B arm, by a stable hash)
and
   that arm's variant (``bandit``, ``rules``, ``static:<action>``; the holdout computes what
   ``default_variant`` would do);
2. the actions the catalog allows (``streams.promotion.actions``), minus those the guard rails
block now
   (``streams.promotion.guardrails``: margin, per-customer limits, stacking, budget);
3. the context features (``streams.promotion.features``, next-purchase signals optional) and the
   variant's choice with its propensity;
4. unless the customer is in the holdout: the offer is issued (budget reserved, offer recorded
   for the customer's limits) and returned to the agent; the decision's attribution window is
   opened (``streams.promotion.rewards``) for every decision, holdout and no-offer included;
5. a decision record (``DecisionRecord`` in ``schemas/events.py``) for the decisions topic;
6. the offer carries the cart's add-ons from the next-purchase signals (``add_ons``: bought
   together with the cart, then the model's picks; `streams.decisions.with_add_ons`), after
   the step that decided it: the add-ons change nothing the policy decides or records.

One randomised decision per cart: while the cart (its generation) and the actions the catalog
allows stay the same, a later cart change repeats the decision (the agent then suppresses the
unchanged offer); a change of the allowed actions (a tier reached, a nudge target changed)
makes a new decision. Every cart event gets one record: a repeat's has its own decision id
(from its cart event), ``repeat_of`` the decision it repeats, that decision's action and
propensity, ``sent: false``, no options, features, cart products or country, and opens no
attribution window (the decision's reward is learned once; ``repeat_of`` is null on every other
record). A new decision that picks the offer this cart already got (the agent would not emit it
again) reserves nothing and is logged ``sent: false``, ``guard: "repeated"``: the ledgers hold
reservations of emitted offers only. Likewise an offer that loses to an engagement action
(the merchant's ``engagement.combine: best_value``, ``context.contest``: the action's expected
value exceeds the offer's expected incremental value, the chooser's objective averaged over its
draws) is logged ``sent: false``, ``guard: "engagement_action"`` (not learned from: it was not
shown), and the agent sends the action instead.

One record per decision id: a decision id already made for the customer (its attribution
window open or closed, or the latest repeat logged; e.g. an abandoned-cart reminder asking for
the cart's offer again) is not decided again; its offer, if it sent one, is returned and
nothing is logged. A decision
whose state write was lost in a crash is made again when its cart is redelivered; its random
draws come from its own stream, seeded by the decision id (`PromotionPolicy.rng`), so it
chooses the same while the bandit's statistics and the customer's state are the same.

``decide_batch`` (the `Policy` protocol) returns the offers only and keeps the records for
``drain_records``; ``decide`` returns both. The policy mutates ``context.state`` (its
``"promo"`` part) and the ``ledgers`` mapping, as the agent's tables expect. Its inputs (the
features, the objective, the coupon candidate's cart check, the record's cart products and
country) are read from ``context.view``: the state as the cart event left it, not as the rest
of its micro-batch did.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass

import numpy as np

from schemas.keys import decision_id_for, iso, offer_id_for
from schemas.records import SCHEMA_VERSION
from streams.decisions import DecisionContext, Offer, with_add_ons
from streams.learning.partitioned import PartitionedModels, learning_key, merchant_of
from streams.promotion import guardrails, rewards
from streams.promotion.actions import (
    Action,
    CouponCandidate,
    candidate_actions,
    no_offer,
    offer_for,
)
from streams.promotion.bandit import (
    BanditChooser,
    ChoiceInput,
    Chooser,
    LinearThompson,
    RulesChooser,
    StaticChooser,
)
from streams.promotion.experiments import HOLDOUT, Experiment, assign, variant_of
from streams.promotion.features import FEATURE_SET, NextPurchaseSignals, context_features
from streams.promotion.objective import ObjectiveConfig, horizon_margin, repurchase_probability
from streams.state import customer_state

SignalsProvider = Callable[[Sequence[DecisionContext]], Sequence[NextPurchaseSignals | None] | None]
MAX_KEPT_RECORDS = 10_000
#: the guard outcomes a decision record names (``guard``)
GUARDS_LOGGED = ("over_budget", "duplicate", "repeated", "engagement_action")


def variant(name: str) -> Chooser:
    """A chooser by variant name: ``bandit``, ``rules`` or ``static:<action id or kind>``."""
    if name == "bandit":
        return BanditChooser()
    if name == "rules":
        return RulesChooser()
    if name.startswith("static:"):
        return StaticChooser(name.removeprefix("static:"))
    raise ValueError(f"unknown policy variant {name!r} (bandit, rules, static:<action>)")


@dataclass
class PolicyDecision:
    offer: Offer | None  # what the agent emits (None: nothing)
    record: dict | None  # the DecisionRecord (None: a cart event already logged, asked again)
    rewards: list[dict]  # rewards forced out by this decision (rare: too many open windows)
    action: Action | None = None  # the action decided (None: no new decision, a repeat)
    options: list[Action] | None = None  # the allowed actions (None: no new decision)


def _coupon(signals: NextPurchaseSignals | None) -> CouponCandidate | None:
    product = getattr(signals, "coupon_product_id", None) if signals is not None else None
    if not product:
        return None
    return CouponCandidate(
        product_id=product,
        probability=float(getattr(signals, "coupon_probability", None) or 0.0),
        price=getattr(signals, "coupon_price", None),
    )


#: The fields of a decision that the records of its repeats carry (kept in the cart's sticky
#: decision, ``state["promo"]["cart"]``).
_REPEATED = (
    "arm",
    "policy",
    "model_version",
    "action",
    "action_kind",
    "promotion_id",
    "product_id",
    "propensity",
    "sent",
    "horizon_margin",
    "repurchase_probability",
)


def _cart_fields(ctx: DecisionContext, generation: int, decision_id: str, experiment: str) -> dict:
    """The fields of a decision record that come from its cart event and merchant."""
    merchant = ctx.merchant
    return {
        "record": "decision",
        "schema_version": SCHEMA_VERSION,
        "decision_id": decision_id,
        "merchant_id": merchant.id,
        "customer_key": ctx.customer_key,
        "cart_event_id": ctx.cart_event_id,
        "cart_generation": generation,
        "event_time": iso(ctx.ts),
        "cart_value": ctx.cart_value,
        "currency": ctx.currency,
        "experiment": experiment,
        "margin_rate": merchant.margin_rate,
        "deep_discount_depth": merchant.deep_discount_depth,
        "deep_discount_cost": merchant.deep_discount_cost,
        "feature_set": FEATURE_SET,
    }


def _cart_product_ids(state: dict) -> list[str]:
    """The cart's product ids in cart order, each once (the decision record's ``cart_products``)."""
    return list(dict.fromkeys(line[0] for line in (state.get("cart") or {}).get("lines") or []))


class PromotionPolicy:
    """Experiments + guard rails + variants (bandit, rules, static) + decision records."""

    def __init__(
        self,
        experiment: Experiment | None = None,
        variants: dict[str, Chooser] | None = None,
        default_variant: str = "bandit",
        objective: ObjectiveConfig | None = None,
        ledgers: MutableMapping[str, dict] | None = None,
        partitions: int = 1,
        partition_of: Callable[[str], int] | None = None,
        signals: SignalsProvider | None = None,
        seed: int = 0,
    ) -> None:
        self.experiment = experiment or Experiment()
        wanted = {arm.variant for arm in self.experiment.arms} | {default_variant}
        self.variants = dict(variants or {})
        for name in wanted - set(self.variants):
            self.variants[name] = variant(name)
        self.default_variant = default_variant
        self.objective = objective or ObjectiveConfig()
        self.ledgers = ledgers if ledgers is not None else {}
        self.partitions = partitions
        self.partition_of = partition_of or (lambda key: 0)
        self.signals = signals
        self.seed = seed
        self.name = f"promotion/{self.experiment.id}"
        self.records: deque[dict] = deque(maxlen=MAX_KEPT_RECORDS)
        self.evicted: deque[dict] = deque(maxlen=MAX_KEPT_RECORDS)
        self.blocked: dict[str, int] = dict.fromkeys(guardrails.REASONS, 0)

    # -- the Policy protocol ----------------------------------------------------------------

    def decide_batch(self, contexts: Sequence[DecisionContext]) -> list[Offer | None]:
        decisions = self.decide(contexts)
        for d in decisions:
            if d.record is not None:
                self.records.append(d.record)
            self.evicted.extend(d.rewards)
        return [d.offer for d in decisions]

    def drain_blocked(self) -> dict[str, int]:
        """Actions blocked by each guard rail since the last call (for the metrics)."""
        blocked = dict(self.blocked)
        self.blocked = dict.fromkeys(guardrails.REASONS, 0)
        return blocked

    def drain_records(self) -> tuple[list[dict], list[dict]]:
        """Decision records, and rewards forced out of full windows, made by ``decide_batch``
        since the last call."""
        records, evicted = list(self.records), list(self.evicted)
        self.records.clear()
        self.evicted.clear()
        return records, evicted

    # -- decisions ----------------------------------------------------------------------------

    def decide(self, contexts: Sequence[DecisionContext]) -> list[PolicyDecision]:
        signals = self.signals(contexts) if self.signals is not None and contexts else None
        # customer key -> [generation, offer key] of the last offer returned in this call: the
        # caller records them (``customer_state.record_offer``) only after the whole call
        offered: dict[str, list] = {}
        decisions = []
        for i, ctx in enumerate(contexts):
            cart_signals = signals[i] if signals is not None else None
            decision = self._decide_one(ctx, cart_signals, offered)
            if decision.offer is not None and ctx.generation is not None:
                offered[ctx.customer_key] = [ctx.generation, decision.offer.key]
            if decision.offer is not None and cart_signals is not None:
                decision.offer = with_add_ons(
                    decision.offer,
                    getattr(cart_signals, "add_ons", ()),
                    getattr(cart_signals, "add_on_sources", ()),
                )
            decisions.append(decision)
        return decisions

    def rng(self, decision_id: str) -> np.random.Generator:
        """The decision's own random stream (Thompson draws, exploration), from its id and the
        policy's seed: a replayed decision draws the same, whatever batch it comes in."""
        digest = hashlib.blake2b(f"{decision_id}|{self.seed}".encode(), digest_size=8).digest()
        return np.random.default_rng(int.from_bytes(digest, "big"))

    def _ledger(self, action: Action, customer_key: str) -> tuple[str | None, dict | None]:
        promotion = action.promotion
        if promotion is None or promotion.budget is None:
            return None, None
        merchant_id = customer_key.partition(":")[0]
        partition = self.partition_of(customer_key)
        key = guardrails.ledger_key(merchant_id, promotion.id, partition)
        share = guardrails.partition_budget(promotion.budget, self.partitions)
        ledger = guardrails.ensure_ledger(self.ledgers, key, share)
        return key, ledger

    def _allowed(self, ctx: DecisionContext, promo: dict, actions: list[Action]) -> list[Action]:
        allowed = []
        for action in actions:
            key, ledger = self._ledger(action, ctx.customer_key)
            reason = guardrails.blocked_reason(action, ctx.merchant, promo, ledger, ctx.ts)
            if reason == "budget" and ledger is not None and guardrails.expire(ledger, ctx.ts):
                self.ledgers[key] = ledger  # expired reservations gave budget back: look again
                reason = guardrails.blocked_reason(action, ctx.merchant, promo, ledger, ctx.ts)
            if reason is None:
                allowed.append(action)
            else:
                self.blocked[reason] += 1
        return allowed

    def _decide_one(
        self,
        ctx: DecisionContext,
        signals: NextPurchaseSignals | None,
        offered: Mapping[str, list],
    ) -> PolicyDecision:
        merchant = ctx.merchant
        promo = guardrails.promo_state(ctx.state)
        guardrails.expire_customer(promo, ctx.ts)
        arm = assign(self.experiment, ctx.customer_key)
        variant_name = variant_of(self.experiment, arm, self.default_variant)
        coupon = _coupon(signals)
        actions = candidate_actions(
            merchant,
            ctx.cart_value,
            ctx.currency,
            ctx.ts,
            coupon,
            frozenset(_cart_product_ids(ctx.view) if coupon and merchant.product_coupons else ()),
        )
        generation = ctx.generation
        if generation is None:
            generation = (ctx.view.get("cart") or {}).get("generation", 0)
        candidates = [a.id for a in actions]
        decision_id = decision_id_for(ctx.customer_key, ctx.cart_event_id)
        made = rewards.decision_made(ctx.state, decision_id)
        if made is not None:  # decided before (a journey's reminder of this cart): not again
            repeat = next((a for a in actions if a.id == made["action"]), None)
            offer = offer_for(repeat, ctx.currency) if repeat and made["sent"] else None
            return PolicyDecision(offer, None, [])
        sticky = promo.get("cart")
        if (
            sticky is not None
            and "decision_id" in sticky  # (a sticky kept before repeats were logged: decide)
            and sticky["generation"] == generation
            and sticky["candidates"] == candidates
            and sticky["arm"] == arm
        ):
            return self._repeat(ctx, generation, decision_id, sticky, actions)

        allowed = self._allowed(ctx, promo, actions)
        features = np.array(context_features(ctx.view, ctx.cart_value, ctx.ts, signals))
        horizon = horizon_margin(
            ctx.view, ctx.cart_value, ctx.ts, merchant.margin_rate, self.objective
        )
        repurchase = repurchase_probability(ctx.view, ctx.ts, self.objective)
        chooser = self.variants[variant_name]
        row = ChoiceInput(ctx, merchant, features, allowed, horizon, repurchase)
        choice = chooser.choose(row, self.rng(decision_id))
        action = allowed[choice.index]
        propensity = choice.propensity
        expires = ctx.ts + merchant.offer_ttl_hours * 3600.0
        sent = arm != HOLDOUT and action.promotion is not None
        guard = None
        if sent and ctx.generation is not None:
            # the caller would not emit the offer this cart got last: reserve nothing for it
            last = offered.get(ctx.customer_key, ctx.state.get("last_offer"))
            if customer_state.repeats_offer(last, generation, offer_for(action, ctx.currency).key):
                sent, guard = False, "repeated"
        if sent and ctx.contest is not None:
            # ``combine: best_value``: the offer goes out only if it is worth at least the action
            values = choice.values
            if not ctx.contest.decide(None if values is None else values[choice.index]):
                sent, guard = False, "engagement_action"
        if sent:
            key, _ = self._ledger(action, ctx.customer_key)
            guard = guardrails.issue(promo, self.ledgers, key, decision_id, action, expires)
            if guard == "over_budget":
                sent, action, propensity = False, no_offer(ctx.cart_value), 1.0
        offer = offer_for(action, ctx.currency) if sent else None
        offer_id = offer_id_for(ctx.customer_key, ctx.cart_event_id, offer.key) if offer else None
        record = {
            **_cart_fields(ctx, generation, decision_id, self.experiment.id),
            "arm": arm,
            "policy": chooser.name,
            "model_version": choice.version,
            "action": action.id,
            "action_kind": action.kind,
            "promotion_id": action.promotion.id if action.promotion else None,
            "product_id": action.product_id,
            "propensity": round(propensity, 6),
            "sent": sent,
            "offer_id": offer_id,
            "max_discount": action.discount if sent else None,
            "horizon_margin": round(horizon, 4),
            "repurchase_probability": round(repurchase, 6),
            "options": [
                {
                    "action": a.id,
                    "action_kind": a.kind,
                    "probability": round(p, 6),
                    "basket": a.basket,
                    "discount": a.discount,
                }
                for a, p in zip(allowed, choice.probabilities, strict=True)
            ],
            "features": [round(float(v), 6) for v in features],
            "guard": guard if guard in GUARDS_LOGGED else None,
            "repeat_of": None,
            "cart_products": _cart_product_ids(ctx.view),
            "country": (ctx.view.get("profile") or {}).get("country"),
        }
        promo["cart"] = {
            "generation": generation,
            "candidates": candidates,
            "arm": arm,
            "decision_id": decision_id,
            "last": decision_id,  # the latest cart event logged for this decision
            **{field: record[field] for field in _REPEATED},
        }
        terms = {
            "tier_type": action.promotion.type if action.promotion else None,
            "percent": action.promotion.percent if action.promotion else 0.0,
            "shipping_cost": merchant.shipping_cost,
            "margin_rate": merchant.margin_rate,
            "ledger_key": self._ledger(action, ctx.customer_key)[0] if sent else None,
        }
        window = merchant.offer_ttl_hours * 3600.0
        evicted = rewards.open_decision(ctx.state, record, ctx.ts, window, terms)
        return PolicyDecision(offer, record, evicted, action, allowed)

    def _repeat(
        self,
        ctx: DecisionContext,
        generation: int,
        decision_id: str,
        sticky: dict,
        actions: list[Action],
    ) -> PolicyDecision:
        """A cart event that repeats its cart's decision (``sticky``): that decision's offer
        again (the agent suppresses it) and a record of its own, ``repeat_of`` that decision,
        ``sent: false``, which opens no attribution window (nothing to learn twice). A call for
        the latest cart event logged (an abandoned-cart reminder) logs nothing."""
        repeat = next((a for a in actions if a.id == sticky["action"]), None)
        offer = offer_for(repeat, ctx.currency) if repeat and sticky["sent"] else None
        if sticky["last"] == decision_id:
            return PolicyDecision(offer, None, [])
        sticky["last"] = decision_id
        record = {
            **_cart_fields(ctx, generation, decision_id, self.experiment.id),
            **{field: sticky[field] for field in _REPEATED},
            "sent": False,
            "offer_id": None,
            "max_discount": None,
            "options": [],
            "features": [],
            "guard": None,
            "repeat_of": sticky["decision_id"],
            "cart_products": None,
            "country": None,
        }
        return PolicyDecision(offer, record, [])

    # -- learning -----------------------------------------------------------------------------

    def learn(self, reward_records: Sequence[dict]) -> int:
        """Update every learning variant from rewards; returns how many were learned."""
        learned = 0
        for reward in reward_records:
            if not rewards.learnable(reward):
                continue
            for chooser in self.variants.values():
                if isinstance(chooser, BanditChooser) and chooser.name == reward["policy"]:
                    learned += chooser.learn(reward)
        return learned

    def state_dict(self) -> dict:
        return {
            name: chooser.state_dict()
            for name, chooser in self.variants.items()
            if isinstance(chooser, BanditChooser)
        }

    def load_state_dict(self, state: dict) -> None:
        for name, data in state.items():
            chooser = self.variants.get(name)
            if isinstance(chooser, BanditChooser):
                chooser.load_state_dict(data)


class PartitionedLearning(PartitionedModels[dict[str, LinearThompson]]):
    """The bandit variants' statistics kept apart per merchant and input partition
    (``streams.learning.partitioned``); the policy's bandits sample from the prior plus their
    sum (``LinearThompson.merged``). A part is plain JSON (`entry`): ``{variant name:
    LinearThompson.to_dict()}``.
    """

    def __init__(self, policy: PromotionPolicy) -> None:
        super().__init__()
        self.policy = policy

    def _bandits(self) -> dict[str, BanditChooser]:
        return {
            name: chooser
            for name, chooser in self.policy.variants.items()
            if isinstance(chooser, BanditChooser)
        }

    def learn(self, reward_records: Sequence[dict], partition_of: Callable[[str], int]) -> set[str]:
        """Learn every learnable reward into its partition's part; returns the keys of the
        parts that changed (their merchants' bandits are rebuilt)."""
        bandits = self._bandits()
        changed = set()
        for reward in reward_records:
            if not rewards.learnable(reward):
                continue
            key = learning_key(reward["merchant_id"], partition_of(reward["customer_key"]))
            for name, chooser in bandits.items():
                if chooser.name != reward["policy"]:
                    continue
                part = self.parts.setdefault(key, {})
                model = part.get(name) or part.setdefault(name, chooser.learner())
                learned = model.update(
                    reward["decision_id"],
                    reward["features"],
                    reward["action"],
                    reward["purchased"],
                    reward["redeemed"],
                )
                if learned:
                    changed.add(key)
        self.merge(changed)
        return changed

    def entry(self, key: str) -> dict:
        return {name: model.to_dict() for name, model in self.parts.get(key, {}).items()}

    def part_of(self, entry: dict) -> dict[str, LinearThompson]:
        bandits = self._bandits()
        return {
            name: LinearThompson.from_dict(data, bandits[name].config, bandits[name].objective)
            for name, data in entry.items()
            if name in bandits
        }

    def set_merged(self, merchant_id: str, parts: list[dict[str, LinearThompson]]) -> None:
        for name, chooser in self._bandits().items():
            chooser.set_merged(merchant_id, [part[name] for part in parts if name in part])

    def summary(self) -> dict:
        """Updates learned per variant and merchant, in all and per part (a read-only view)."""
        view: dict = {}
        for name, chooser in self._bandits().items():
            for merchant, model in sorted(chooser.models.items()):
                parts = {
                    key: part[name].updates
                    for key, part in sorted(self.parts.items())
                    if merchant_of(key) == merchant and name in part
                }
                view.setdefault(name, {})[merchant] = {"updates": model.updates, "parts": parts}
        return view
