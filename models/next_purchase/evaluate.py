"""Offline evaluation of next-purchase recommenders (``nextbest evaluate``): one protocol.

Protocol:

* Time split at ``--cutoff`` (default 2011-10-01). Everything the methods see, the model's
  training and the catalogue included, is strictly before the cutoff.
* Scored: every customer with at least one order before the cutoff and one at or after it.
  The target is the set of products in that customer's first order after the cutoff. A
  customer with no order after the cutoff has no target and is left out: counting them as
  misses would scale every method's figures by the same factor.
* Every method scores as of the cutoff (the model's ``now``: days since each purchase and the
  catalogue's trends are measured at the cutoff, never later).
* Every method ranks the whole catalogue (all products bought before the cutoff); no sampled
  negatives. Hit@k: at least one of the top k is in the target order; MRR: 1 / rank of the
  best-placed target product (0 if none is in the catalogue). Ties are broken by popularity,
  then product id, so every ranking is deterministic.
* Cohorts: all scored customers, and those with at most 10 orders before the cutoff.
* Discovery (what a recommender adds beyond re-orders): the customers whose target order holds
  a product they never bought before the cutoff; each method's ranking with the customer's
  own past products removed, the target being the new products only. Personal frequency and
  last basket reduce to their popularity fill there; it is where the LSTM term has to earn
  its keep, since the repeat score only ranks past products.
* Repeat / explore split (Li et al., "A Next Basket Recommendation Reality Check"): in the
  cohorts all and "<= 10 orders", each Hit@k is split by the best-placed target product in the
  top k: one the customer bought before (``hit@k_repeat``) or a new one (``hit@k_explore``);
  the two add up to Hit@k.
* Methods: most popular by orders, most popular by units, personal purchase frequency (orders
  holding the product, popularity breaking ties and filling the rest), last basket with
  popularity fill, the field's next-basket baselines (TIFU-KNN, UP-CF, a time-aware repurchase
  cycle, item-to-item co-occurrence: `baselines`; they learn from every customer's orders
  before the cutoff, scored or not), the model without its LSTM (learned repeat + popularity
  scores: the ablation) and the full model, each trained on the pre-cutoff orders once per
  ``--seeds``, and each of the two blended with TIFU-KNN (`blend`: the model's order for
  products the customer bought, for the others TIFU-KNN's, weighted by `BLEND_WEIGHT`; the
  ablation's blend is the blend's ablation), and each re-ranked by `stacking` (``stacked``,
  ``stacked_no_lstm``: the model's order for products the customer bought, a learned mix of
  the model and the bought-together table for the others, fitted on the customers the model's
  training held out), model variants, not baselines.
* Every method against personal frequency (all customers) and against the strongest baseline
  of each cohort and metric (Hit@1, Hit@10, MRR): relative gains with 95% paired bootstrap
  intervals over customers.
* ``--tune-baselines`` chooses the field's baselines' hyper-parameters instead: a small grid
  each (`TUNING_GRID`), scored by all customers' MRR at ``--cutoff``; run it on an earlier
  cutoff than the reported one (2011-07-01 for 2011-10-01) and put the chosen values into the
  defaults of the parameter classes in `baselines`.
* ``--tune-blend`` chooses `BLEND_WEIGHT` instead: the full model trained once per ``--seeds``,
  blended at every weight of `BLEND_GRID`, scored by the discovery cohort's MRR (the lowest
  weight of the best); run it on the earlier cutoff too; writes ``blend_tuning.json``.

Writes ``evaluation.json`` (every figure) and ``evaluation.png`` (bars per method and k) to
``--out`` and prints the table. ``--artifact`` evaluates a saved model instead of training; it
is refused unless that model was trained with a cutoff no later than this one.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from models.next_purchase import artifact, baselines, stacking
from models.next_purchase.encoding import Order, Vocab, encode_history  # noqa: E402
from models.next_purchase.loading import (  # noqa: E402
    epoch_seconds,
    file_sha256,
    load_transactions,
    orders_from_lines,
    split_at,
)
from models.next_purchase.model import ModelConfig, Recommender, collate  # noqa: E402
from models.next_purchase.similar_items import SimilarItems  # noqa: E402
from models.next_purchase.train import (  # noqa: E402
    DEFAULT_DATA,
    KS,
    NotEnoughData,
    TrainConfig,
    fit,
    rank_metrics,
    target_ranks,
)

MODELS = {"repeat_no_lstm": False, "lstm_repeat": True}  # name -> use_lstm
BLEND_NEIGHBOUR = "tifu_knn"
BLENDS = {name: f"{name}+{BLEND_NEIGHBOUR}" for name in MODELS}  # each model blended (`blend`)
BLENDED = BLENDS["lstm_repeat"]
BLEND_WEIGHT = 1.0  # chosen by `--tune-blend --cutoff 2011-07-01` (BENCHMARKS.md)
BLEND_GRID = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
STACKS = {"lstm_repeat": "stacked", "repeat_no_lstm": "stacked_no_lstm"}  # `stacking`
REFERENCE = "personal_frequency"
BAR = {"hit@1": 0.15, "hit@10": 0.05}  # required relative gain over the reference
SMALL = 10  # the "<= 10 prior orders" cohort
_DAY = 86400.0


DISCOVERY = "discovery"
SMALL_COHORT = f"<={SMALL}_orders"
COMPARED = {"hit@1": 1, "hit@10": 10, "mrr": None}  # metric -> k of `gain_interval`
FIELD_PARAMS = {  # the parameters the evaluation runs them with: each class's tuned defaults
    "tifu_knn": baselines.TifuKnn(),
    "up_cf": baselines.UpCf(),
    "repurchase_cycle": baselines.RepurchaseCycle(),
    "item_cooccurrence": baselines.ItemCooccurrence(),
}
TUNING_GRID = {
    "tifu_knn": {
        "group_size": [3, 7],
        "within_decay": [0.9, 1.0],
        "across_decay": [0.4, 0.6, 0.8, 1.0],
        "neighbours": [300, 1000],
        "alpha": [0.3, 0.5, 0.7, 0.9],
    },
    "up_cf": {
        "recency": [1, 3, 10, None],
        "asymmetry": [0.0, 0.25, 0.5, 0.75],
        "locality": [1, 5, 10],
    },
    "repurchase_cycle": {
        "shrinkage": [1, 5, 20],
        "width": [1.0, 2.0, 4.0],
        "floor": [0.3, 0.6, 0.9, 1.0],
    },
    "item_cooccurrence": {"basis": ["orders", "customers"], "recent_orders": [1, 3, 10, None]},
}


@dataclass
class Targets:
    """What each scored customer's first order after the cutoff holds, and who is in which
    cohort: ``mask`` (customers, catalogue) the target products; ``bought`` the products of
    the customer's orders before the cutoff; ``small`` the "<= 10 orders" cohort."""

    mask: torch.Tensor
    bought: torch.Tensor
    small: torch.Tensor

    @property
    def new(self) -> torch.Tensor:
        """The target products each customer never bought before the cutoff."""
        return self.mask & ~self.bought

    @property
    def discovering(self) -> torch.Tensor:
        """The customers whose target holds a product they never bought (the discovery cohort)."""
        return self.new.any(dim=1)


def method_ranks(scores: torch.Tensor, targets: Targets) -> dict[str, torch.Tensor]:
    """Each customer's rank of the best-placed target product: ``all`` over the whole
    catalogue (``repeat`` and ``explore``: of the best-placed one the customer bought before,
    and of the best-placed new one), `DISCOVERY` (its customers only) among the products they
    never bought."""
    rows = targets.discovering
    unseen = scores[rows].masked_fill(targets.bought[rows], -torch.inf)
    return {
        "all": target_ranks(scores, targets.mask),
        "repeat": target_ranks(scores, targets.mask & targets.bought),
        "explore": target_ranks(scores, targets.new),
        DISCOVERY: target_ranks(unseen, targets.new[rows]),
    }


def per_customer_rank(scores: torch.Tensor) -> torch.Tensor:
    """Each score's rank within its row as a fraction in (0, 1]: 1 the row's highest."""
    order = scores.argsort(dim=1, stable=True)
    ranks = torch.empty_like(scores, dtype=torch.float64)
    steps = torch.arange(1, scores.shape[1] + 1, dtype=torch.float64).expand_as(ranks)
    return ranks.scatter_(1, order, steps / scores.shape[1])


def blend(
    model: torch.Tensor, neighbour: torch.Tensor, bought: torch.Tensor, weight: float
) -> torch.Tensor:
    """The model's scores for the products each customer bought before (its order among them
    kept), and for the others ``(1 - weight) * model + weight * neighbour``, both rank-normalised
    per customer (`per_customer_rank`), so that a never-bought product a neighbourhood method
    ranks high rises; the model breaks ties. Weight 0 ranks like the model; the padding column
    stays last."""
    own = per_customer_rank(model)
    mixed = (1.0 - weight) * own + weight * per_customer_rank(neighbour) + 1e-9 * own  # ties
    out = torch.where(bought, own, mixed)
    out[:, 0] = -torch.inf
    return out


def cohort_ranks(ranks: dict[str, torch.Tensor], small: torch.Tensor, cohort: str) -> torch.Tensor:
    """The per-customer ranks (from `method_ranks`) of one cohort's customers."""
    return {
        "all": lambda: ranks["all"],
        SMALL_COHORT: lambda: ranks["all"][small],
        DISCOVERY: lambda: ranks[DISCOVERY],
    }[cohort]()


def repeat_explore(repeat: torch.Tensor, explore: torch.Tensor) -> dict[str, float]:
    """Hit@k split by the best-placed target product in the top k: bought before (a tie goes
    to repeat) or new. The two parts add up to Hit@k."""
    out = {}
    for k in KS:
        out[f"hit@{k}_repeat"] = float(((repeat <= k) & (repeat <= explore)).double().mean())
        out[f"hit@{k}_explore"] = float(((explore <= k) & (explore < repeat)).double().mean())
    return out


def cohort_metrics(ranks: dict[str, torch.Tensor], small: torch.Tensor) -> dict[str, dict]:
    """Hit@k and MRR per cohort, with the repeat / explore split of Hit@k where the cohort
    ranks the whole catalogue; a cohort with no customer is left out (it has no figures)."""
    out = {}
    for cohort in ("all", SMALL_COHORT, DISCOVERY):
        r = cohort_ranks(ranks, small, cohort)
        if not len(r):
            continue
        out[cohort] = rank_metrics(r)
        if cohort != DISCOVERY:
            rows = small if cohort == SMALL_COHORT else slice(None)
            out[cohort].update(repeat_explore(ranks["repeat"][rows], ranks["explore"][rows]))
    return out


def relative_gain(value: float, reference: float) -> float | None:
    """value / reference - 1; None where the reference is 0 (no gain can be stated)."""
    return value / reference - 1.0 if reference else None


def mean_over_seeds(runs: list[dict]) -> dict:
    out = {}
    for cohort in runs[0]:
        out[cohort] = {
            m: float(np.mean([r[cohort][m] for r in runs])) for m in runs[0][cohort] if m != "n"
        }
        out[cohort].update(
            {f"{m}_std": float(np.std([r[cohort][m] for r in runs])) for m in ("hit@1", "hit@10")}
        )
        out[cohort]["n"] = runs[0][cohort]["n"]
    return out


def gain_interval(
    ranks: list[torch.Tensor], reference: list[torch.Tensor], k: int | None, draws: int = 2000
) -> list[float] | None:
    """95% paired bootstrap interval, over customers, of Hit@k(method) / Hit@k(reference) - 1
    (``k`` None: of MRR).

    Each argument: one rank per customer for each seed; a customer's hit (reciprocal rank) is its
    mean over seeds. None when more than 5% of the draws have no reference hit (the ratio is
    undefined there).
    """

    def per_customer(r: torch.Tensor) -> torch.Tensor:
        return 1.0 / r if k is None else (r <= k).double()

    hits, ref = (
        torch.stack([per_customer(r) for r in rs]).mean(dim=0) for rs in (ranks, reference)
    )
    draw = torch.randint(len(ref), (draws, len(ref)), generator=torch.Generator().manual_seed(0))
    base = ref[draw].mean(dim=1)
    ratio = (hits[draw].mean(dim=1) / base - 1.0)[base > 0]  # a draw with no reference hit: none
    if len(ratio) < draws * 0.95:
        return None  # the reference hits too rarely for a ratio interval
    return torch.quantile(ratio, torch.tensor([0.025, 0.975], dtype=ratio.dtype)).tolist()


def lstm_ablation(
    results: dict,
    ranks_of: dict,
    cohort: str,
    with_lstm: str = "lstm_repeat",
    without_lstm: str = "repeat_no_lstm",
) -> dict:
    """The full model (or its blend) over its ablation without the LSTM in ``cohort``
    (`DISCOVERY` or all): relative gains of the seed means, and paired bootstrap intervals for
    Hit@1 and Hit@10."""
    if cohort not in ("all", DISCOVERY):
        raise ValueError(f"no per-customer ranks kept for cohort {cohort}")
    full, without = ([r[cohort] for r in ranks_of[m]] for m in (with_lstm, without_lstm))
    out = {
        m: relative_gain(results[with_lstm][cohort][m], results[without_lstm][cohort][m])
        for m in ("hit@1", "hit@10", "mrr")
    }
    out.update({f"hit@{k}_interval95": gain_interval(full, without, k) for k in (1, 10)})
    return out


def against_strongest(
    results: dict, ranks_of: dict, baseline_names: list[str], small: torch.Tensor
) -> dict:
    """Per cohort and metric (`COMPARED`): the strongest baseline (the first of the highest
    among ``baseline_names``) and every other method's relative gain over it, with its 95%
    paired bootstrap interval over the cohort's customers."""
    out: dict[str, dict] = {}
    for cohort in results[baseline_names[0]]:
        out[cohort] = {}
        for metric, k in COMPARED.items():
            best = max(baseline_names, key=lambda name: results[name][cohort][metric])
            reference = [cohort_ranks(r, small, cohort) for r in ranks_of[best]]
            out[cohort][metric] = {
                "baseline": best,
                "value": results[best][cohort][metric],
                "methods": {
                    name: {
                        "gain": relative_gain(
                            results[name][cohort][metric], results[best][cohort][metric]
                        ),
                        "interval95": gain_interval(
                            [cohort_ranks(r, small, cohort) for r in ranks], reference, k
                        ),
                    }
                    for name, ranks in ranks_of.items()
                    if name != best
                },
            }
    return out


def field_baselines(
    histories: list[list[Order]], vocab: Vocab, others: list[list[Order]], now: float
) -> dict[str, Callable[[Any], torch.Tensor]]:
    """The field's baselines on these customers, each a function of its parameters (the
    evaluation passes `FIELD_PARAMS`)."""
    return {
        "tifu_knn": lambda p: baselines.tifu_knn(histories, vocab, others, p),
        "up_cf": lambda p: baselines.up_cf(histories, vocab, others, p),
        "repurchase_cycle": lambda p: baselines.repurchase_cycle(histories, vocab, now, others, p),
        "item_cooccurrence": lambda p: baselines.item_cooccurrence(histories, vocab, others, p),
    }


def tune_baselines(methods: dict[str, Callable[[Any], torch.Tensor]], targets: Targets) -> dict:
    """Every combination of `TUNING_GRID` for each of ``methods``, scored by all customers'
    MRR (then Hit@10); returns per method the grid's figures, best first, and the chosen one."""
    out = {}
    for name, grid in TUNING_GRID.items():
        default = FIELD_PARAMS[name]
        rows = []
        for values in itertools.product(*grid.values()):
            params = replace(default, **dict(zip(grid, values, strict=True)))
            started = time.monotonic()
            metrics = rank_metrics(target_ranks(methods[name](params), targets.mask))
            rows.append(
                {
                    "params": asdict(params),
                    "mrr": metrics["mrr"],
                    "hit@10": metrics["hit@10"],
                    "seconds": round(time.monotonic() - started, 2),
                }
            )
        rows.sort(key=lambda row: (-row["mrr"], -row["hit@10"]))
        chosen = type(default)(**rows[0]["params"])
        out[name] = {"chosen": repr(chosen), "default_now": repr(default), "grid": rows}
        print(
            f"{name}: {len(rows)} combinations, best MRR {rows[0]['mrr']:.4f} "
            f"(Hit@10 {rows[0]['hit@10']:.4f}), worst {rows[-1]['mrr']:.4f}: {chosen!r}",
            flush=True,
        )
    return out


def cutoff_hint(orders: dict[str, list[Order]]) -> str:
    """For a cutoff that scores nobody: the file's first and last order days, and the day
    nearest to leaving the last quarter of its orders after it on which some customer has
    orders on both sides (what `split_at` needs), if there is one."""
    times = np.sort([t for seq in orders.values() for t, _ in seq])
    if not len(times):
        return "the file has no orders"
    day = (times // _DAY).astype(np.int64)
    first_last = [(seq[0][0] // _DAY, seq[-1][0] // _DAY) for seq in orders.values() if seq]
    days = np.arange(day[0] + 1, day[-1] + 1)
    scores_someone = np.zeros(len(days), bool)
    for first, last in first_last:  # a cutoff on day d splits a customer with first < d <= last
        scores_someone[int(first) + 1 - day[0] - 1 : int(last) - day[0]] = True
    span = f"its orders run from {_date(day[0])} to {_date(day[-1])}"
    if not scores_someone.any():
        return f"{span}, and no customer has orders on two different days"
    candidates = days[scores_someone]
    target = day[int(len(day) * 0.75)]
    return f"{span}: try --cutoff {_date(candidates[np.abs(candidates - target).argmin()])}"


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1%}"


def interval(bounds: list[float] | None) -> str:
    return "[n/a]" if bounds is None else f"[{bounds[0]:+.1%}, {bounds[1]:+.1%}]"


def _date(day: int) -> str:
    return str(np.datetime64(int(day), "D"))


def chart(results: dict, path: Path, title: str) -> None:
    """Bars of Hit@k per cohort and method; where a cohort has the repeat / explore split, the
    hatched, paler top of a bar is the explore part."""
    cohorts = list(next(iter(results.values())))
    fig, axes = plt.subplots(1, len(cohorts), figsize=(8 * len(cohorts), 5), sharey=True)
    width = 0.8 / len(results)
    colours = plt.get_cmap("tab20" if len(results) > 10 else "tab10").colors
    for ax, cohort in zip(np.atleast_1d(axes), cohorts, strict=True):
        for j, (method, res) in enumerate(results.items()):
            x = np.arange(len(KS)) + j * width
            r, colour = res[cohort], colours[j % len(colours)]
            if f"hit@{KS[0]}_repeat" in r:
                repeat = [r[f"hit@{k}_repeat"] for k in KS]
                explore = [r[f"hit@{k}_explore"] for k in KS]
                ax.bar(x, repeat, width, color=colour, label=method)
                ax.bar(x, explore, width, bottom=repeat, color=colour, alpha=0.45, hatch="//")
            else:
                ax.bar(x, [r[f"hit@{k}"] for k in KS], width, color=colour, label=method)
        ax.set_xticks(np.arange(len(KS)) + 0.4 - width / 2, [f"Hit@{k}" for k in KS])
        split = " (hatched: new products)" if cohort != DISCOVERY else " (new products only)"
        ax.set_title(f"{cohort} (n={res[cohort]['n']}){split}")
        ax.grid(axis="y", alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("hit rate")
    np.atleast_1d(axes)[0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(results: dict) -> str:
    lines = []
    for cohort in next(iter(results.values())):
        n = next(iter(results.values()))[cohort]["n"]
        lines.append(f"\ncohort {cohort} (n={n})")
        lines.append(
            f"{'method':<24}" + "".join(f"{h:>9}" for h in [*(f"Hit@{k}" for k in KS), "MRR"])
        )
        for method, res in results.items():
            r = res[cohort]
            vals = [r[f"hit@{k}"] for k in KS] + [r["mrr"]]
            lines.append(f"{method:<24}" + "".join(f"{x:>9.4f}" for x in vals))
    return "\n".join(lines)


def split_table(results: dict) -> str:
    """Hit@k as repeat + explore (the best-placed target product in the top k bought before,
    or new) for the cohorts that have the split."""
    lines = []
    for cohort, r in next(iter(results.values())).items():
        if f"hit@{KS[0]}_repeat" not in r:
            continue
        lines.append(f"\ncohort {cohort}: Hit@k = repeat + explore")
        lines.append(f"{'method':<24}" + "".join(f"{f'Hit@{k}':>16}" for k in KS))
        for method, res in results.items():
            c = res[cohort]
            parts = [f"{c[f'hit@{k}_repeat']:.4f}+{c[f'hit@{k}_explore']:.4f}" for k in KS]
            lines.append(f"{method:<24}" + "".join(f"{x:>16}" for x in parts))
    return "\n".join(lines)


def strongest_table(compared: dict, methods: list[str]) -> str:
    """`against_strongest`'s figures: per cohort, the strongest baseline of each metric, and
    each of ``methods``' gain over it with its interval."""
    lines = ["\nagainst the strongest baseline of each cohort and metric (95% paired bootstrap):"]
    for cohort, by_metric in compared.items():
        best = "  ".join(f"{m} {c['baseline']} {c['value']:.4f}" for m, c in by_metric.items())
        lines.append(f"cohort {cohort}: strongest {best}")
        for name in methods:
            cells = []
            for metric, c in by_metric.items():
                figures = c["methods"].get(name)
                gain = "(it)" if figures is None else percent(figures["gain"])
                bounds = "" if figures is None else interval(figures["interval95"])
                cells.append(f"{metric} {gain:>7} {bounds:<16}")
            lines.append(f"  {name:<24}" + "  ".join(cells))
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="nextbest evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--data", default=DEFAULT_DATA, help="Online Retail csv / csv.gz / xlsx")
    p.add_argument("--cutoff", default="2011-10-01")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default=None, help="default var/evaluation/<file>_<cutoff>")
    p.add_argument("--artifact", default=None, help="evaluate this saved model, no training")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--tune-baselines",
        action="store_true",
        help="choose the field's baselines' parameters at this cutoff (use an earlier one than "
        "the reported cutoff, e.g. 2011-07-01) instead of evaluating; writes tuning.json",
    )
    p.add_argument(
        "--tune-blend",
        action="store_true",
        help=f"choose {BLENDED}'s weight at this cutoff (use an earlier one than the reported "
        "cutoff, e.g. 2011-07-01) by the discovery cohort's MRR instead of evaluating; trains "
        "the full model once per --seeds and writes blend_tuning.json",
    )
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    lines, report = load_transactions(args.data)
    cutoff = epoch_seconds(args.cutoff)
    orders = orders_from_lines(lines)
    before, after = split_at(orders, cutoff)
    customers = sorted(c for c in before if c in after)
    if not customers:
        print(f"no customer has orders on both sides of {args.cutoff}; {cutoff_hint(orders)}")
        return 1
    vocab = Vocab.build(before)
    units = lines[lines["seconds"] < cutoff].groupby("product")["quantity"].sum().to_dict()
    histories = [before[c] for c in customers]
    targets = Targets(
        mask=torch.zeros(len(customers), len(vocab), dtype=torch.bool),
        bought=baselines.order_counts(histories, vocab) > 0,
        small=torch.tensor([len(h) <= SMALL for h in histories]),
    )
    for row, cust in enumerate(customers):
        known = [vocab.index[p] for p in after[cust][0][1] if p in vocab.index]
        targets.mask[row, known] = True
    others = [before[c] for c in sorted(before) if c not in after]  # learnt from, not scored
    field = field_baselines(histories, vocab, others, cutoff)
    out = Path(args.out or f"var/evaluation/{Path(args.data).name.split('.')[0]}_{args.cutoff}")
    if args.tune_baselines:
        tuning = tune_baselines(field, targets)
        out.mkdir(parents=True, exist_ok=True)
        (out / "tuning.json").write_text(
            json.dumps({"cutoff": args.cutoff, "metric": "mrr", "baselines": tuning}, indent=1)
        )
        print(f"wrote {out / 'tuning.json'}")
        return 0

    results: dict[str, dict] = {}
    per_seed: dict[str, list] = {}
    scorers: dict[str, Callable[[], torch.Tensor]] = {
        "popular_orders": lambda: baselines.popular_orders(histories, vocab),
        "popular_units": lambda: baselines.popular_units(histories, vocab, units),
        "personal_frequency": lambda: baselines.personal_frequency(histories, vocab),
        "last_basket": lambda: baselines.last_basket(histories, vocab),
        **{name: partial(score, FIELD_PARAMS[name]) for name, score in field.items()},
    }
    ranks_of: dict[str, list[dict[str, torch.Tensor]]] = {}  # per method, per seed, per ranking
    baseline_seconds = {}
    for name, score in scorers.items():
        begun = time.monotonic()
        scores = score()
        baseline_seconds[name] = round(time.monotonic() - begun, 2)
        ranks_of[name] = [method_ranks(scores, targets)]
        results[name] = cohort_metrics(ranks_of[name][0], targets.small)
    print("baselines scored in " + ", ".join(f"{n} {t}s" for n, t in baseline_seconds.items()))

    def model_scores(rec: Recommender) -> torch.Tensor:
        encoded = [encode_history(h, rec.vocab, rec.encoder, now=cutoff) for h in histories]
        probs = rec.probabilities(encoded).double()
        probs += torch.arange(len(vocab), 0, -1, dtype=torch.float64) * 1e-12  # tie-break
        probs[:, 0] = -torch.inf
        return probs

    def model_ranks(rec: Recommender) -> dict[str, torch.Tensor]:
        return method_ranks(model_scores(rec), targets)

    def train(seed: int, use_lstm: bool) -> tuple[Recommender, dict]:
        cfg = TrainConfig(
            data=args.data,
            cutoff=args.cutoff,
            seed=seed,
            device=args.device,
            model=ModelConfig(use_lstm=use_lstm),
        )
        model, summary = fit(before, vocab, cfg, progress=not args.quiet)
        return Recommender(model, vocab, cfg.encoder, device=summary["device"]), summary

    served_similarity: list = []  # the table `nextbest train` serves, built once

    def stacked_scores(
        rec: Recommender, held_out: list[str], seed: int
    ) -> tuple[torch.Tensor, dict]:
        """``rec``'s scores re-ranked by a `stacking.Reranker` fitted on the customers its
        training held out, applied with the table of every pre-cutoff order."""
        config = TrainConfig()
        if not served_similarity:
            table = SimilarItems.fit(before, config.similar)
            served_similarity.append(stacking.similarity_matrix(table, vocab))
        weights, fitted = stacking.fit(
            rec.model, vocab, before, held_out, rec.encoder, config.similar, seed=seed
        )
        reranker = stacking.Reranker(weights, served_similarity[0], stacking.StackingConfig())
        encoded = [encode_history(h, rec.vocab, rec.encoder, now=cutoff) for h in histories]
        scores = rec.popularity.double().log().expand(len(encoded), -1).clone()  # cold rows
        warm = [r for r, h in enumerate(encoded) if h.n_orders]
        with torch.no_grad():
            for start in range(0, len(warm), 512):
                rows = warm[start : start + 512]
                chunk = [encoded[r] for r in rows]
                logits = rec.model(collate(chunk).to(rec.device)).cpu()
                scores[rows] = reranker.rerank(logits, chunk).double()
        scores += torch.arange(len(vocab), 0, -1, dtype=torch.float64) * 1e-12  # tie-break
        scores[:, 0] = -torch.inf
        return scores, fitted

    neighbour_scores = field[BLEND_NEIGHBOUR](FIELD_PARAMS[BLEND_NEIGHBOUR])
    if args.tune_blend:
        grid: dict[float, list[float]] = {w: [] for w in BLEND_GRID}
        for seed in args.seeds:
            try:
                rec, _ = train(seed, use_lstm=True)
            except NotEnoughData as error:
                print(f"cannot train the model on the orders before {args.cutoff}: {error}")
                return 1
            scores = model_scores(rec)
            for w in BLEND_GRID:
                ranks = method_ranks(blend(scores, neighbour_scores, targets.bought, w), targets)
                grid[w].append(cohort_metrics(ranks, targets.small))
        rows = [{"weight": w, **mean_over_seeds(runs)} for w, runs in grid.items()]
        for row in rows:
            print(
                f"weight {row['weight']:.1f}: "
                + "  ".join(
                    f"{c} MRR {row[c]['mrr']:.4f} Hit@10 {row[c]['hit@10']:.4f}"
                    for c in ("all", DISCOVERY)
                )
            )
        chosen = max(rows, key=lambda row: (row[DISCOVERY]["mrr"], -row["weight"]))["weight"]
        print(f"chosen weight (discovery MRR): {chosen}")
        out.mkdir(parents=True, exist_ok=True)
        (out / "blend_tuning.json").write_text(
            json.dumps(
                {
                    "cutoff": args.cutoff,
                    "seeds": args.seeds,
                    "neighbour": BLEND_NEIGHBOUR,
                    "metric": f"{DISCOVERY} mrr",
                    "chosen": chosen,
                    "grid": rows,
                },
                indent=1,
            )
        )
        print(f"wrote {out / 'blend_tuning.json'}")
        return 0

    training = {}
    if args.artifact:
        path = artifact.resolve(args.artifact)
        trained_to = json.loads((path / "config.json").read_text()).get("cutoff")
        if not trained_to or epoch_seconds(trained_to) > cutoff:
            print(f"refused: {path} was trained with cutoff {trained_to}, after {args.cutoff}")
            return 2
        rec = artifact.load(path)
        if rec.vocab.items != vocab.items:
            print(f"refused: {path} has a different catalogue than {args.data} before the cutoff")
            return 2
        name = f"artifact:{path.name}"
        ranks_of[name] = [model_ranks(rec)]
        results[name] = cohort_metrics(ranks_of[name][0], targets.small)
    else:
        for name, use_lstm in MODELS.items():
            per_seed[name], ranks_of[name] = [], []
            for seed in args.seeds:
                try:
                    rec, summary = train(seed, use_lstm)
                except NotEnoughData as error:
                    print(f"cannot train the model on the orders before {args.cutoff}: {error}")
                    return 1
                scores = model_scores(rec)
                ranks_of[name].append(method_ranks(scores, targets))
                per_seed[name].append(cohort_metrics(ranks_of[name][-1], targets.small))
                blended = blend(scores, neighbour_scores, targets.bought, BLEND_WEIGHT)
                ranks_of.setdefault(BLENDS[name], []).append(method_ranks(blended, targets))
                per_seed.setdefault(BLENDS[name], []).append(
                    cohort_metrics(ranks_of[BLENDS[name]][-1], targets.small)
                )
                begun = time.monotonic()
                reranked, fitted = stacked_scores(rec, summary["held_out"], seed)
                ranks_of.setdefault(STACKS[name], []).append(method_ranks(reranked, targets))
                per_seed.setdefault(STACKS[name], []).append(
                    cohort_metrics(ranks_of[STACKS[name]][-1], targets.small)
                )
                training[f"{name}/seed{seed}"] = {
                    k: summary[k] for k in ("seconds", "best_epoch", "epochs_run", "device")
                }
                training[f"{STACKS[name]}/seed{seed}"] = {
                    **fitted,
                    "seconds": round(time.monotonic() - begun, 1),
                }
                print(f"{STACKS[name]} seed {seed}: {per_seed[STACKS[name]][-1]} {fitted}")
                print(f"{name} seed {seed}: {per_seed[name][-1]['all']} ({summary['seconds']}s)")
            results[name] = mean_over_seeds(per_seed[name])
        for name in [*BLENDS.values(), *STACKS.values()]:
            results[name] = mean_over_seeds(per_seed[name])

    ref = results[REFERENCE]["all"]
    gains = {
        name: {m: relative_gain(res["all"][m], ref[m]) for m in ("hit@1", "hit@5", "hit@10", "mrr")}
        for name, res in results.items()
    }
    print(
        f"Online Retail protocol, cutoff {args.cutoff}, {len(customers)} customers, "
        f"catalogue {len(vocab) - 1}; model rows are means over seeds {args.seeds}"
    )
    print(table(results))
    print(split_table(results))
    intervals = {
        name: {
            metric: gain_interval(
                [r["all"] for r in ranks], [r["all"] for r in ranks_of[REFERENCE]], k
            )
            for metric, k in COMPARED.items()
        }
        for name, ranks in ranks_of.items()
    }
    ablation, blend_ablation, stack_ablation = {}, {}, {}
    if set(MODELS) <= set(ranks_of):
        cohorts = [c for c in ("all", DISCOVERY) if c in results["lstm_repeat"]]
        ablation = {c: lstm_ablation(results, ranks_of, c) for c in cohorts}
        blend_ablation = {
            c: lstm_ablation(results, ranks_of, c, BLENDED, BLENDS["repeat_no_lstm"])
            for c in cohorts
        }
        stack_ablation = {c: lstm_ablation(results, ranks_of, c, *STACKS.values()) for c in cohorts}
    print(f"\nrelative to {REFERENCE} (cohort all; 95% bootstrap interval over customers):")
    for name, g in gains.items():
        ci = intervals[name]
        print(
            f"  {name:<24}"
            + "  ".join(
                f"{m} {percent(v)}" + (f" {interval(ci[m])}" if m in ci else "")
                for m, v in g.items()
            )
        )
    for name in per_seed:
        ok = all((gains[name][m] or 0.0) >= need for m, need in BAR.items())
        print(f"  {name}: bar (Hit@1 +15%, Hit@10 +5%) {'MET' if ok else 'NOT met'}")
    for (full, without), cohort, figures in [
        *((("lstm_repeat", "repeat_no_lstm"), c, f) for c, f in ablation.items()),
        *(((BLENDED, BLENDS["repeat_no_lstm"]), c, f) for c, f in blend_ablation.items()),
        *((tuple(STACKS.values()), c, f) for c, f in stack_ablation.items()),
    ]:
        print(
            f"what the LSTM adds, cohort {cohort} ({full} / {without} - 1): "
            + "  ".join(
                f"{m} {percent(figures[m])}"
                + (f" {interval(figures[f'{m}_interval95'])}" if m != "mrr" else "")
                for m in ("hit@1", "hit@10", "mrr")
            )
        )

    compared = against_strongest(results, ranks_of, list(scorers), targets.small)
    print(strongest_table(compared, list(results)))

    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "protocol": {
            "data": args.data,
            "data_sha256": file_sha256(args.data),
            "cutoff": args.cutoff,
            "customers": len(customers),
            "customers_small": int(targets.small.sum()),
            "customers_discovery": int(targets.discovering.sum()),
            "catalogue": len(vocab) - 1,
            "seeds": args.seeds,
            "load_report": asdict(report),
        },
        "results": results,
        "per_seed": per_seed,
        "relative_to_" + REFERENCE: gains,
        "relative_interval95_" + REFERENCE: intervals,
        "against_strongest_baseline": compared,
        "lstm_over_ablation": ablation,
        "blend_lstm_over_ablation": blend_ablation,
        "stacked_lstm_over_ablation": stack_ablation,
        "baseline_params": {name: asdict(p) for name, p in FIELD_PARAMS.items()},
        "blend": {"method": BLENDED, "neighbour": BLEND_NEIGHBOUR, "weight": BLEND_WEIGHT},
        "baseline_seconds": baseline_seconds,
        "training": training,
        "seconds": round(time.monotonic() - started, 1),
    }
    (out / "evaluation.json").write_text(json.dumps(payload, indent=1, allow_nan=False))
    chart(results, out / "evaluation.png", f"{Path(args.data).name}, cutoff {args.cutoff}")
    print(f"\nwrote {out / 'evaluation.json'} and {out / 'evaluation.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
