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
* Methods: most popular by orders, most popular by units, personal purchase frequency (orders
  holding the product, popularity breaking ties and filling the rest), last basket with
  popularity fill, the model without its LSTM (learned repeat + popularity scores: the
  ablation) and the full model, each trained on the pre-cutoff orders once per ``--seeds``.

Writes ``evaluation.json`` (every figure) and ``evaluation.png`` (bars per method and k) to
``--out`` and prints the table. ``--artifact`` evaluates a saved model instead of training; it
is refused unless that model was trained with a cutoff no later than this one.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from models.next_purchase import artifact, baselines
from models.next_purchase.encoding import Order, Vocab, encode_history  # noqa: E402
from models.next_purchase.loading import (  # noqa: E402
    epoch_seconds,
    file_sha256,
    load_transactions,
    orders_from_lines,
    split_at,
)
from models.next_purchase.model import ModelConfig, Recommender  # noqa: E402
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
REFERENCE = "personal_frequency"
BAR = {"hit@1": 0.15, "hit@10": 0.05}  # required relative gain over the reference
SMALL = 10  # the "<= 10 prior orders" cohort
_DAY = 86400.0


DISCOVERY = "discovery"


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
    catalogue, `DISCOVERY` (its customers only) among the products they never bought."""
    rows = targets.discovering
    unseen = scores[rows].masked_fill(targets.bought[rows], -torch.inf)
    return {
        "all": target_ranks(scores, targets.mask),
        DISCOVERY: target_ranks(unseen, targets.new[rows]),
    }


def cohort_metrics(ranks: dict[str, torch.Tensor], small: torch.Tensor) -> dict[str, dict]:
    """Hit@k and MRR per cohort; a cohort with no customer is left out (it has no figures)."""
    cohorts = {
        "all": ranks["all"],
        f"<={SMALL}_orders": ranks["all"][small],
        DISCOVERY: ranks[DISCOVERY],
    }
    return {name: rank_metrics(r) for name, r in cohorts.items() if len(r)}


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
    ranks: list[torch.Tensor], reference: list[torch.Tensor], k: int, draws: int = 2000
) -> list[float] | None:
    """95% paired bootstrap interval, over customers, of Hit@k(method) / Hit@k(reference) - 1.

    Each argument: one rank per customer for each seed; a customer's hit is its mean over seeds.
    None when more than 5% of the draws have no reference hit (the ratio is undefined there).
    """
    hits, ref = (
        torch.stack([(r <= k).double() for r in rs]).mean(dim=0) for rs in (ranks, reference)
    )
    draw = torch.randint(len(ref), (draws, len(ref)), generator=torch.Generator().manual_seed(0))
    base = ref[draw].mean(dim=1)
    ratio = (hits[draw].mean(dim=1) / base - 1.0)[base > 0]  # a draw with no reference hit: none
    if len(ratio) < draws * 0.95:
        return None  # the reference hits too rarely for a ratio interval
    return torch.quantile(ratio, torch.tensor([0.025, 0.975], dtype=ratio.dtype)).tolist()


def lstm_ablation(results: dict, ranks_of: dict, cohort: str) -> dict:
    """The full model over its ablation without the LSTM in ``cohort`` (`DISCOVERY` or all):
    relative gains of the seed means, and paired bootstrap intervals for Hit@1 and Hit@10."""
    if cohort not in ("all", DISCOVERY):
        raise ValueError(f"no per-customer ranks kept for cohort {cohort}")
    full, without = ([r[cohort] for r in ranks_of[m]] for m in ("lstm_repeat", "repeat_no_lstm"))
    out = {
        m: relative_gain(results["lstm_repeat"][cohort][m], results["repeat_no_lstm"][cohort][m])
        for m in ("hit@1", "hit@10", "mrr")
    }
    out.update({f"hit@{k}_interval95": gain_interval(full, without, k) for k in (1, 10)})
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
    cohorts = list(next(iter(results.values())))
    fig, axes = plt.subplots(1, len(cohorts), figsize=(7 * len(cohorts), 4.5), sharey=True)
    width = 0.8 / len(results)
    for ax, cohort in zip(np.atleast_1d(axes), cohorts, strict=True):
        for j, (method, res) in enumerate(results.items()):
            vals = [res[cohort][f"hit@{k}"] for k in KS]
            ax.bar(np.arange(len(KS)) + j * width, vals, width, label=method)
        ax.set_xticks(np.arange(len(KS)) + 0.4 - width / 2, [f"Hit@{k}" for k in KS])
        ax.set_title(f"{cohort} (n={res[cohort]['n']})")
        ax.grid(axis="y", alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("hit rate")
    np.atleast_1d(axes)[0].legend(fontsize=8)
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
            f"{'method':<22}" + "".join(f"{h:>9}" for h in [*(f"Hit@{k}" for k in KS), "MRR"])
        )
        for method, res in results.items():
            r = res[cohort]
            vals = [r[f"hit@{k}"] for k in KS] + [r["mrr"]]
            lines.append(f"{method:<22}" + "".join(f"{x:>9.4f}" for x in vals))
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

    results: dict[str, dict] = {}
    per_seed: dict[str, list] = {}
    baseline_scores = {
        "popular_orders": baselines.popular_orders(histories, vocab),
        "popular_units": baselines.popular_units(histories, vocab, units),
        "personal_frequency": baselines.personal_frequency(histories, vocab),
        "last_basket": baselines.last_basket(histories, vocab),
    }
    ranks_of: dict[str, list[dict[str, torch.Tensor]]] = {}  # per method, per seed, per ranking
    for name, scores in baseline_scores.items():
        ranks_of[name] = [method_ranks(scores, targets)]
        results[name] = cohort_metrics(ranks_of[name][0], targets.small)

    def model_ranks(rec: Recommender) -> dict[str, torch.Tensor]:
        encoded = [encode_history(h, rec.vocab, rec.encoder, now=cutoff) for h in histories]
        probs = rec.probabilities(encoded).double()
        probs += torch.arange(len(vocab), 0, -1, dtype=torch.float64) * 1e-12  # tie-break
        probs[:, 0] = -torch.inf
        return method_ranks(probs, targets)

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
                cfg = TrainConfig(
                    data=args.data,
                    cutoff=args.cutoff,
                    seed=seed,
                    device=args.device,
                    model=ModelConfig(use_lstm=use_lstm),
                )
                try:
                    model, summary = fit(before, vocab, cfg, progress=not args.quiet)
                except NotEnoughData as error:
                    print(f"cannot train the model on the orders before {args.cutoff}: {error}")
                    return 1
                rec = Recommender(model, vocab, cfg.encoder, device=summary["device"])
                ranks_of[name].append(model_ranks(rec))
                per_seed[name].append(cohort_metrics(ranks_of[name][-1], targets.small))
                training[f"{name}/seed{seed}"] = {
                    k: summary[k] for k in ("seconds", "best_epoch", "epochs_run", "device")
                }
                print(f"{name} seed {seed}: {per_seed[name][-1]['all']} ({summary['seconds']}s)")
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
    intervals = {
        name: {
            f"hit@{k}": gain_interval(
                [r["all"] for r in ranks], [r["all"] for r in ranks_of[REFERENCE]], k
            )
            for k in (1, 10)
        }
        for name, ranks in ranks_of.items()
    }
    ablation = {}
    if set(MODELS) <= set(ranks_of):
        ablation = {
            cohort: lstm_ablation(results, ranks_of, cohort)
            for cohort in ("all", DISCOVERY)
            if cohort in results["lstm_repeat"]
        }
    print(f"\nrelative to {REFERENCE} (cohort all; 95% bootstrap interval over customers):")
    for name, g in gains.items():
        ci = intervals[name]
        print(
            f"  {name:<22}"
            + "  ".join(
                f"{m} {percent(v)}" + (f" {interval(ci[m])}" if m in ci else "")
                for m, v in g.items()
            )
        )
    for name in per_seed:
        ok = all((gains[name][m] or 0.0) >= need for m, need in BAR.items())
        print(f"  {name}: bar (Hit@1 +15%, Hit@10 +5%) {'MET' if ok else 'NOT met'}")
    for cohort, figures in ablation.items():
        print(
            f"what the LSTM adds, cohort {cohort} (lstm_repeat / repeat_no_lstm - 1): "
            + "  ".join(
                f"{m} {percent(figures[m])}"
                + (f" {interval(figures[f'{m}_interval95'])}" if m != "mrr" else "")
                for m in ("hit@1", "hit@10", "mrr")
            )
        )

    out = Path(args.out or f"var/evaluation/{Path(args.data).name.split('.')[0]}_{args.cutoff}")
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
        "lstm_over_ablation": ablation,
        "training": training,
        "seconds": round(time.monotonic() - started, 1),
    }
    (out / "evaluation.json").write_text(json.dumps(payload, indent=1, allow_nan=False))
    chart(results, out / "evaluation.png", f"{Path(args.data).name}, cutoff {args.cutoff}")
    print(f"\nwrote {out / 'evaluation.json'} and {out / 'evaluation.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
