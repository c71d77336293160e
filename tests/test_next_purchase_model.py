"""Tiny end-to-end runs: train -> artifact -> load -> score, cold start, and evaluate."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from models.next_purchase import artifact, encoding, evaluate, loading, similar_items, train
from models.next_purchase import model as next_purchase
from models.next_purchase.encoding import EncoderConfig, Vocab, encode_batch, encode_history
from models.next_purchase.loading import file_sha256
from models.next_purchase.model import (
    ModelConfig,
    NextPurchaseLSTM,
    Recommender,
    ServeBatch,
    collate,
)

COLUMNS = ["InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice"]
COLUMNS += ["CustomerID", "Country"]
PRODUCTS = [f"{21000 + i}" for i in range(30)]


def _shop(path, customers: int = 60, orders: int = 8, seed: int = 0) -> dict[str, list[str]]:
    """A shop where every customer keeps re-buying two personal staples among random extras.

    Returns each customer's staples. Orders run from 2011-01-03, one every ~9 days.
    """
    rng = np.random.default_rng(seed)
    rows, staples = [], {}
    for c in range(customers):
        cust = str(12000 + c)
        staples[cust] = list(rng.choice(PRODUCTS[10:], size=2, replace=False))
        for j in range(orders):
            date = pd.Timestamp("2011-01-03") + pd.Timedelta(days=9 * j, hours=c % 24)
            extras = rng.choice(PRODUCTS[:10], size=2, replace=False).tolist()
            for code in staples[cust] + extras:
                rows.append((f"{c:03d}{j:02d}", code, "x", "2", str(date), "1.25", cust, "UK"))
    pd.DataFrame(rows, columns=COLUMNS).to_csv(path, index=False)
    return staples


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shop")
    data = tmp / "shop.csv"
    staples = _shop(data)
    torch.set_num_threads(1)
    argv = ["--data", str(data), "--out", str(tmp / "models"), "--seed", "1"]
    assert train.main([*argv, "--max-epochs", "8", "--lr", "0.01", "--device", "cpu"]) == 0
    return tmp, data, staples


def test_artifact_layout(trained):
    tmp, data, _ = trained
    root = tmp / "models"
    version = (root / "latest").read_text().strip()
    path = root / version
    for name in ("weights.pt", "vocab.json", "config.json", "metrics.json", "data.json"):
        assert (path / name).is_file(), name
    assert json.loads((path / "data.json").read_text())["sha256"] == file_sha256(data)
    assert version.endswith(file_sha256(data)[:8])
    config = json.loads((path / "config.json").read_text())
    assert config["seed"] == 1 and config["model"]["use_lstm"] is True
    metrics = json.loads((path / "metrics.json").read_text())
    assert metrics["load_report"]["kept"] == 60 * 8 * 4
    assert 0.0 <= metrics["validation"]["hit@10"] <= 1.0
    assert metrics["best_epoch"] <= metrics["epochs_run"] <= 8
    # the bought-together table of the same orders, in the same version
    table = similar_items.load(path)
    assert table.items == artifact.load(root).vocab.items[1:]
    assert metrics["similar_items"]["products"] == len(table) == 30
    assert metrics["similar_items"]["with_neighbours"] == 30  # every staple has customers


def test_loaded_model_learns_staples(trained):
    tmp, _, staples = trained
    rec = artifact.load(tmp / "models")
    customers = sorted(staples)
    day = 86400.0
    histories = [
        [(j * 9 * day, [*staples[c], PRODUCTS[j % 10]]) for j in range(3)] for c in customers
    ]
    scored = rec.score_batch(histories, k=2)
    hits = [set(s.items) == set(staples[c]) for s, c in zip(scored, customers, strict=True)]
    assert np.mean(hits) > 0.9
    for s in scored:
        assert not s.cold_start and len(s.items) == 2
        assert s.scores[0] >= s.scores[1] > 0.0 and sum(s.scores) <= 1.0


def test_score_batch_matches_one_by_one(trained):
    tmp, _, staples = trained
    rec = artifact.load(tmp / "models")
    day = 86400.0
    histories = [
        [(0.0, staples["12000"])],
        [(j * day, [PRODUCTS[j], PRODUCTS[20 + j]]) for j in range(7)],
        [],
        [(0.0, ["21001"]), (5 * day, ["21013", "99999"]), (6 * day, staples["12005"])],
    ]
    together = rec.score_batch(histories, k=5)
    for history, batched in zip(histories, together, strict=True):
        alone = rec.score_batch([history], k=5)[0]
        assert alone.items == batched.items
        np.testing.assert_allclose(alone.scores, batched.scores, rtol=1e-5)
    # a scoring time: one for all, or one per history (None: as of the last order)
    times = [30 * day, None, 2 * day, 40 * day]
    at_times = rec.score_batch(histories, k=5, now=times)
    assert at_times[1].items == together[1].items
    for history, t, batched in zip(histories, times, at_times, strict=True):
        alone = rec.score_batch([history], k=5, now=t)[0]
        assert alone.items == batched.items
        np.testing.assert_allclose(alone.scores, batched.scores, rtol=1e-5)
    one_time = rec.score_batch(histories[:1], k=5, now=30 * day)[0]
    np.testing.assert_allclose(one_time.scores, at_times[0].scores, rtol=1e-5)
    assert at_times[0].scores != together[0].scores  # 30 days without an order change things
    with pytest.raises(ValueError, match="2 times for 4 histories"):
        rec.score_batch(histories, now=[0.0, 1.0])


def reference_scores(rec: Recommender, histories: list, times: list, k: int) -> list:
    """The scoring `score_batch` replaced: `encode_history` per history, `forward` on the
    collated batch (`Recommender.probabilities`), softmax, top-k."""
    encoded = [
        encode_history(h, rec.vocab, rec.encoder, now=t)
        for h, t in zip(histories, times, strict=True)
    ]
    top = rec.probabilities(encoded).topk(k, dim=-1)
    return [
        ([rec.vocab.items[i] for i in idx], val, not e.n_orders)
        for e, val, idx in zip(encoded, top.values.tolist(), top.indices.tolist(), strict=True)
    ]


@pytest.mark.parametrize("seed", range(4))
def test_encode_batch_equals_encode_history_on_awkward_histories(seed):
    """`encode_batch` reads clean histories (the worker's state) all at once and sends any
    other through the per-order rule: both give `encode_history`'s input, bit for bit, in
    any mix: ids outside the catalogue or not normalised, postage, an id twice in an order,
    orders over `MAX_ORDER_PRODUCTS`, empty orders, more than `MAX_ORDERS` orders, more than
    `MAX_HISTORY_PRODUCTS` ids, short ``max_orders``; in batches large and small."""
    rng = np.random.default_rng(seed)
    items = ["<pad>", *(f"{20000 + i}" for i in range(400))]
    vocab = Vocab(items, [0, *range(400, 0, -1)], [0] * 401, [0.2] * 401, [1] * 401)
    day = 86400.0

    def order(size: int) -> list[str]:
        return list(rng.choice(items[1:], size=min(size, 400), replace=False))

    awkward = [
        lambda o: [*o, "POST"],
        lambda o: [*o, o[0]] if o else o,
        lambda o: [p.lower() for p in o],
        lambda o: [*o, "99999"],
        lambda o: [],
        lambda o: order(260),
    ]
    histories = []
    for h in range(60):
        n = int(rng.choice([0, 1, 2, 3, 5, 12, 49, 50, 51, 70]))
        sizes = rng.integers(1, 40 if h % 5 else 120, n)
        history = [(j * 3 * day + rng.random() * day, order(int(s))) for j, s in enumerate(sizes)]
        if n and h % 3 == 0:  # one awkward order
            j = int(rng.integers(n))
            history[j] = (history[j][0], awkward[(h // 3) % len(awkward)](history[j][1]))
        histories.append(history)
    times = [None if rng.random() < 0.3 else 300 * day * rng.random() for _ in histories]
    assert len(histories) > encoding.BATCH_LOOKUP
    for config, size in (
        (EncoderConfig(), 60),
        (EncoderConfig(max_orders=7), 60),
        (EncoderConfig(), 5),
    ):
        batches = [
            encode_batch(histories[i : i + size], vocab, config, times[i : i + size])
            for i in range(0, len(histories), size)
        ]
        for row, (history, t) in enumerate(zip(histories, times, strict=True)):
            want = encode_history(history, vocab, config, now=t)
            got = batches[row // size].history(row % size)
            assert batches[row // size].n_orders[row % size] == want.n_orders
            for name in ("order_items", "order_lengths", "repeat_items"):
                np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
            assert got.order_feats.tobytes() == want.order_feats.tobytes()
            assert got.repeat_feats.tobytes() == want.repeat_feats.tobytes()


@pytest.mark.parametrize("seed", range(2))
def test_encode_examples_equals_encode_history_at_each_moment(seed, monkeypatch):
    """`encode_examples` (how `build_examples` encodes an epoch) gives `encode_history` of
    each history at its own moment and catalogue statistics, bit for bit, across chunks."""
    rng = np.random.default_rng(seed)
    items = ["<pad>", *(f"{20000 + i}" for i in range(300))]
    vocab = Vocab(items, [0, *range(300, 0, -1)], [0] * 301, [0.2] * 301, [1] * 301)
    moments = [
        encoding.ItemStats(*(rng.integers(0, 50, 301).astype(np.float32) for _ in range(3)),
            rng.uniform(0.05, 0.9, 301))
        for _ in range(3)
    ]  # fmt: skip
    day = 86400.0
    histories, times, stats = [], [], []
    for h in range(50):
        n = int(rng.choice([0, 1, 2, 4, 9, 55]))
        history = [
            (j * 2 * day, list(rng.choice(items[1:], int(rng.integers(1, 30)), replace=False)))
            for j in range(n)
        ]
        if n and h % 4 == 0:
            history[-1] = (history[-1][0], [*history[-1][1], "POST", "99999"])
        histories.append(history)
        times.append(None if h % 7 == 0 else (2 * n + rng.random()) * day)
        stats.append(moments[h % 3])
    monkeypatch.setattr(encoding, "EXAMPLE_CHUNK", 40)  # 40 histories in numpy, 10 one by one
    assert 10 < encoding.BATCH_LOOKUP <= 40
    got = encoding.encode_examples(histories, vocab, EncoderConfig(), times, stats)
    assert len(got) == len(histories)
    for history, t, s, g in zip(histories, times, stats, got, strict=True):
        want = encode_history(history, vocab, EncoderConfig(), now=t, stats=s)
        for name in ("order_items", "order_lengths", "order_feats", "repeat_items"):
            a, b = getattr(g, name), getattr(want, name)
            assert (a.shape, a.dtype, a.tobytes()) == (b.shape, b.dtype, b.tobytes()), name
        assert g.repeat_feats.tobytes() == want.repeat_feats.tobytes()
        assert g.catalogue is s.features()


def test_lstm_buckets_cover_every_row_once():
    n_orders = np.array([3, 1, 20, 2, 1, 7, 50, 4, 2])
    first = np.cumsum(n_orders) - n_orders
    pad = n_orders.sum()
    for run_steps, expected in ((0, 6), (12, 4), (100, 2), (1000, 1)):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(next_purchase, "LSTM_RUN_STEPS", run_steps)
            runs, unsort = next_purchase.lstm_buckets(n_orders)
        assert len(runs) == expected, run_steps
        rows = []
        for run in runs:
            gather = run.gather.view(run.rows, run.longest).numpy()
            lengths = (gather < pad).sum(axis=1)
            histories = len(run.last)
            # padded up to the run sizes, with rows of padding only
            assert run.rows == next_purchase.run_size(histories) >= histories
            assert run.longest == next_purchase.run_size(lengths.max())
            assert run.rows * run.longest <= next_purchase.PADDED_CELLS
            assert (gather[histories:] == pad).all() and (lengths[:histories] > 0).all()
            starts = gather[:histories, 0]
            rows += [int(np.flatnonzero(first == start)[0]) for start in starts]
            assert lengths[:histories].tolist() == n_orders[rows[-histories:]].tolist()
            steps = np.arange(run.longest)
            assert (
                gather[:histories]
                == np.where(steps < lengths[:histories, None], starts[:, None] + steps, pad)
            ).all()
            last = np.arange(histories) * run.longest + lengths[:histories] - 1
            assert (run.last.numpy() == last).all()
        assert sorted(rows) == list(range(len(n_orders)))
        assert np.array_equal(np.array(rows)[unsort], np.arange(len(n_orders)))
    [single] = next_purchase.lstm_buckets(n_orders, buckets=False)[0]
    assert (single.rows, single.longest, len(single.last)) == (12, 64, len(n_orders))
    # a run too large to pad keeps its shape
    [large] = next_purchase.lstm_buckets(np.full(100, 50), buckets=False)[0]
    assert (large.rows, large.longest, len(large.last)) == (100, 50, 100)


def test_run_sizes():
    sizes = [next_purchase.run_size(n) for n in range(1, 600)]
    assert sizes[:8] == [1, 2, 3, 4, 6, 6, 8, 8] and sizes[512 - 1] == 512
    assert sizes[513 - 1] == 513  # above the sizes: as it is
    assert all(n <= size < n * 1.5 or n == size for n, size in enumerate(sizes, 1))


def test_warm_up_builds_every_run_shape_serving_meets():
    """`Recommender.warm_up` runs the LSTM at every padded shape `lstm_buckets` can give a
    chunk of histories (larger runs keep their own shape)."""
    vocab = Vocab(["<pad>", *PRODUCTS], [0, *range(30, 0, -1)], [0] * 31, [0.2] * 31, [1] * 31)
    model = NextPurchaseLSTM(ModelConfig(emb_dim=8, hidden=8), vocab.popularity)
    rec = Recommender(model, vocab, EncoderConfig())
    warmed = set()
    model.lstm.register_forward_pre_hook(lambda _, args: warmed.add(tuple(args[0].shape[:2])))
    rec.warm_up()
    rng = np.random.default_rng(0)
    met = set()
    for _ in range(300):
        rows = int(rng.choice([1, 2, 3, 5, 9, 40, 200, next_purchase.SCORE_CHUNK]))
        n_orders = rng.integers(1, rng.choice([2, 5, 20, 51]), rows)
        for buckets in (True, False):
            runs, _ = next_purchase.lstm_buckets(n_orders, buckets)
            met |= {(run.rows, run.longest) for run in runs}
    size = next_purchase.run_size
    padded = {(r, t) for r, t in met if size(r) * size(t) <= next_purchase.PADDED_CELLS}
    assert padded and padded <= warmed and len(padded) < len(met)
    assert len(warmed) <= len(next_purchase.RUN_SIZES) ** 2


@pytest.mark.parametrize("run_steps", [0, next_purchase.LSTM_RUN_STEPS])
def test_serving_path_equals_forward_bit_for_bit(trained, run_steps, monkeypatch):
    """`score_batch` (batched encoding, cached catalogue logits, LSTM by length bucket) gives
    exactly what `forward` on `encode_history`'s input gives: same products, same floats.
    ``run_steps`` 0: one LSTM run per length bucket, never merged."""
    monkeypatch.setattr(next_purchase, "LSTM_RUN_STEPS", run_steps)
    tmp, _, staples = trained
    rec = artifact.load(tmp / "models")
    day = 86400.0
    rng = np.random.default_rng(0)
    histories = []
    for c, cust in enumerate(sorted(staples)):
        n = c % 12  # 0 ... 11 orders: several length buckets, and cold starts
        histories.append(
            [(j * 5 * day, [*staples[cust], PRODUCTS[(c + j) % 10]]) for j in range(n)]
        )
    histories += [[(0.0, ["21001", "POST", "21001", "99999"])], [(0.0, ["POST"])]]
    times = [None if rng.random() < 0.3 else 70 * day * rng.random() for _ in histories]
    want = reference_scores(rec, histories, times, k=7)
    for buckets in (True, False):
        got = rec.score_batch(histories, k=7, now=times, buckets=buckets)
        assert [(s.items, s.scores, s.cold_start) for s in got] == want
    for h, t in zip(histories, times, strict=True):  # one at a time, as the API serves
        [alone] = rec.score_batch([h], k=7, now=[t])
        assert [(alone.items, alone.scores, alone.cold_start)] == reference_scores(
            rec, [h], [t], k=7
        )
    warm = [i for i, h in enumerate(want) if not h[2]]
    encoded = encode_batch([histories[i] for i in warm], rec.vocab, rec.encoder)
    with torch.no_grad():
        logits = rec.model(collate([encoded.history(i) for i in range(len(warm))]))
        base = rec.model.catalogue_logits(torch.from_numpy(encoded.catalogue))
        served = rec.model.serve_logits(ServeBatch.warm_rows(encoded), base)
    assert torch.equal(served, logits)


@pytest.mark.parametrize("use_lstm", [True, False])
def test_serving_path_equals_forward_untrained(use_lstm):
    """The same, for an untrained model with and without the LSTM (the ablation)."""
    items = ["<pad>", *PRODUCTS]
    vocab = Vocab(items, [0, *range(30, 0, -1)], [0] * 31, [0.2] * 31, [1] * 31)
    torch.manual_seed(0)
    model = NextPurchaseLSTM(ModelConfig(emb_dim=8, hidden=8, use_lstm=use_lstm), vocab.popularity)
    rec = Recommender(model, vocab, EncoderConfig())
    day = 86400.0
    histories = [[(j * day, PRODUCTS[j : j + 3 + c % 4]) for j in range(c % 9)] for c in range(40)]
    times = [9 * day] * len(histories)
    got = rec.score_batch(histories, k=5, now=times)
    assert [(s.items, s.scores, s.cold_start) for s in got] == reference_scores(
        rec, histories, times, k=5
    )


def test_load_refuses_another_artifact_format(trained, tmp_path):
    tmp, _, _ = trained
    path = artifact.resolve(tmp / "models")
    copy = tmp_path / path.name
    shutil.copytree(path, copy)
    data = json.loads((copy / "data.json").read_text())
    (copy / "data.json").write_text(json.dumps({**data, "format": 1}))
    with pytest.raises(ValueError, match="artifact format 1"):
        artifact.load(copy)


def test_untrained_model_ranks_past_products_by_how_often_they_were_bought():
    """The linear repeat term starts as personal frequency: before any training, a customer's
    products come out by how many of their orders held them (equal popularity here)."""
    items = ["<pad>", *PRODUCTS[:6]]
    vocab = Vocab(items, [0, *[5] * 6], [0] * 7, [0.2] * 7, [1] * 7)
    day = 86400.0
    bought = [PRODUCTS[3]] * 5 + [PRODUCTS[1]] * 3 + [PRODUCTS[5]]  # 5, 3 and 1 orders
    for seed in range(5):
        torch.manual_seed(seed)
        rec = Recommender(NextPurchaseLSTM(ModelConfig(), vocab.popularity), vocab, EncoderConfig())
        [scored] = rec.score_batch([[(j * day, [p]) for j, p in enumerate(bought)]], k=3)
        assert scored.items == [PRODUCTS[3], PRODUCTS[1], PRODUCTS[5]]


def test_artifact_from_before_the_linear_repeat_term_loads(trained, tmp_path):
    """An artifact whose config has no ``repeat_linear`` (written before it existed) loads as a
    model without it and scores as it did."""
    tmp, _, staples = trained
    torch.manual_seed(0)
    rec = artifact.load(tmp / "models")
    old = NextPurchaseLSTM(ModelConfig(use_lstm=True, repeat_linear=False), rec.vocab.popularity)
    config = {"model": {k: v for k, v in vars(old.config).items() if k != "repeat_linear"}}
    config["encoder"] = vars(rec.encoder)
    saved = artifact.save(tmp_path, old, rec.vocab, config, "0" * 64, {})
    loaded = artifact.load(saved)
    assert not loaded.model.config.repeat_linear
    assert not hasattr(loaded.model, "repeat_linear")
    day = 86400.0
    histories = [[(j * day, staples[c]) for j in range(3)] for c in sorted(staples)[:5]]
    want = Recommender(old, rec.vocab, rec.encoder).score_batch(histories, k=4)
    assert [s.items for s in loaded.score_batch(histories, k=4)] == [s.items for s in want]


def test_cold_start_falls_back_to_popularity():
    vocab = Vocab(
        ["<pad>", "20002", "20001", "20003C"], [0, 9, 5, 1], [0, 1, 1, 0], [0.2, 0.3, 0.2, 0.1]
    )
    torch.manual_seed(0)
    model = NextPurchaseLSTM(ModelConfig(emb_dim=8, hidden=8), vocab.popularity)
    rec = Recommender(model, vocab, EncoderConfig())
    new, unknown, known = rec.score_batch(
        [[], [(0.0, ["99999", "POST"])], [(0.0, ["20003c"])]], k=3
    )
    for s in (new, unknown):
        assert s.cold_start
        assert s.items == ["20002", "20001", "20003C"]
        np.testing.assert_allclose(s.scores, [9 / 15, 5 / 15, 1 / 15], rtol=1e-6)
    assert not known.cold_start and sorted(known.items) == ["20001", "20002", "20003C"]


def test_ablation_has_no_lstm():
    model = NextPurchaseLSTM(ModelConfig(use_lstm=False), [0, 3, 2])
    assert not any("lstm" in name or "emb" in name for name, _ in model.named_parameters())


def _evaluate_shop(tmp_path, customers: int, orders: int, cutoff: str) -> dict:
    """`nextbest evaluate` (one seed) on a `_shop`; its evaluation.json, read as strict JSON."""
    data = tmp_path / "shop.csv"
    _shop(data, customers=customers, orders=orders)
    out = tmp_path / "eval"
    torch.set_num_threads(1)
    argv = ["--data", str(data), "--cutoff", cutoff, "--seeds", "0", "--out", str(out)]
    assert evaluate.main([*argv, "--quiet"]) == 0
    assert (out / "evaluation.png").stat().st_size > 1000

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in evaluation.json")

    return json.loads((out / "evaluation.json").read_text(), parse_constant=refuse)


def test_evaluate_protocol(tmp_path):
    result = _evaluate_shop(tmp_path, customers=30, orders=6, cutoff="2011-02-10")
    assert result["protocol"]["customers"] == 30
    baselines = {"popular_orders", "popular_units", "personal_frequency", "last_basket"}
    baselines |= set(evaluate.FIELD_PARAMS)
    expected = {*baselines, *evaluate.MODELS, *evaluate.BLENDS.values(), *evaluate.STACKS.values()}
    assert set(result["results"]) == expected
    assert set(result["baseline_seconds"]) == baselines
    for res in result["results"].values():
        assert set(res) == {"all", "<=10_orders", "discovery"}
        assert res["all"]["hit@1"] <= res["all"]["hit@5"] <= res["all"]["hit@20"] <= 1.0
        assert res["discovery"]["n"] == result["protocol"]["customers_discovery"] > 0
        for cohort in ("all", "<=10_orders"):
            for k in train.KS:
                parts = res[cohort][f"hit@{k}_repeat"] + res[cohort][f"hit@{k}_explore"]
                assert parts == pytest.approx(res[cohort][f"hit@{k}"])
        assert "hit@1_repeat" not in res["discovery"]
    # every target holds the customer's two staples: frequency's hits are all repeats
    assert result["results"]["personal_frequency"]["all"]["hit@1_explore"] == 0.0
    # the strongest baseline of each cohort and metric, and every other method against it
    compared = result["against_strongest_baseline"]
    assert set(compared) == {"all", "<=10_orders", "discovery"}
    for cohort, by_metric in compared.items():
        assert set(by_metric) == set(evaluate.COMPARED)
        for metric, c in by_metric.items():
            assert c["baseline"] in baselines
            assert c["value"] == max(result["results"][b][cohort][metric] for b in baselines)
            assert set(c["methods"]) == expected - {c["baseline"]}
            for figures in c["methods"].values():
                low, high = figures["interval95"] or (-1.0, float("inf"))
                assert low <= figures["gain"] <= high
    # every target holds both staples, bought in every earlier order: frequency finds them
    assert result["results"]["personal_frequency"]["all"]["hit@1"] == 1.0
    assert result["results"]["popular_orders"]["all"]["hit@1"] < 1.0
    low, high = result["relative_interval95_personal_frequency"]["popular_orders"]["hit@1"]
    assert low <= result["relative_to_personal_frequency"]["popular_orders"]["hit@1"] <= high
    assert high < 0.0
    # personal frequency has nothing but its popularity fill left for products never bought
    for m in ("hit@1", "hit@10", "mrr"):
        discovery = result["results"]["personal_frequency"]["discovery"][m]
        assert discovery == result["results"]["popular_orders"]["discovery"][m]
    for cohort in ("all", "discovery"):
        ablation = result["lstm_over_ablation"][cohort]
        low, high = ablation["hit@10_interval95"]
        assert low <= ablation["hit@10"] <= high
        for name in ("blend_lstm_over_ablation", "stacked_lstm_over_ablation"):
            ablation = result[name][cohort]
            low, high = ablation["hit@10_interval95"]
            assert low <= ablation["hit@10"] <= high
    for name in evaluate.STACKS.values():
        fitted = result["training"][f"{name}/seed0"]
        assert fitted["examples"] > 0 and fitted["loss_fitted"] <= fitted["loss_identity"]


def test_tune_baselines_scores_every_combination_and_trains_nothing(tmp_path, monkeypatch):
    data = tmp_path / "shop.csv"
    _shop(data, customers=12, orders=5)
    monkeypatch.setattr(evaluate, "fit", lambda *a, **k: pytest.fail("--tune-baselines trains"))
    out = tmp_path / "tuning"
    argv = ["--data", str(data), "--cutoff", "2011-02-01", "--out", str(out), "--tune-baselines"]
    assert evaluate.main(argv) == 0
    tuning = json.loads((out / "tuning.json").read_text())
    assert tuning["cutoff"] == "2011-02-01" and tuning["metric"] == "mrr"
    assert set(tuning["baselines"]) == set(evaluate.TUNING_GRID) == set(evaluate.FIELD_PARAMS)
    for name, grid in evaluate.TUNING_GRID.items():
        rows = tuning["baselines"][name]["grid"]
        assert len(rows) == np.prod([len(values) for values in grid.values()])
        assert [r["mrr"] for r in rows] == sorted((r["mrr"] for r in rows), reverse=True)
        chosen = type(evaluate.FIELD_PARAMS[name])(**rows[0]["params"])
        assert tuning["baselines"][name]["chosen"] == repr(chosen)
    assert not (out / "evaluation.json").exists()


def test_blend_raises_a_never_bought_product_its_neighbours_rank_high():
    """Customer bought items 1 and 2; the model ranks 2 > 1 > 3 > 4, the neighbourhood method
    puts never-bought item 4 first: blended, item 4 passes item 3 and the bought items keep the
    model's order; weight 0 ranks like the model."""
    model = torch.tensor([[-torch.inf, 0.30, 0.40, 0.20, 0.10]])
    neighbour = torch.tensor([[-torch.inf, 3.0, 2.0, 1.0, 9.0]])
    bought = torch.tensor([[False, True, True, False, False]])
    order = evaluate.blend(model, neighbour, bought, 0.5)[0].argsort(descending=True).tolist()
    assert order.index(4) < order.index(3)
    assert order.index(2) < order.index(1)
    assert order[-1] == 0  # the padding column stays last
    unblended = evaluate.blend(model, neighbour, bought, 0.0)[0].argsort(descending=True)
    assert unblended.tolist() == model[0].argsort(descending=True).tolist()


def test_tune_blend_scores_every_weight(tmp_path):
    data = tmp_path / "shop.csv"
    _shop(data, customers=20, orders=5)
    out = tmp_path / "blend"
    torch.set_num_threads(1)
    argv = ["--data", str(data), "--cutoff", "2011-02-01", "--seeds", "0", "--out", str(out)]
    assert evaluate.main([*argv, "--tune-blend", "--quiet"]) == 0
    tuning = json.loads((out / "blend_tuning.json").read_text())
    assert [row["weight"] for row in tuning["grid"]] == evaluate.BLEND_GRID
    best = max(row["discovery"]["mrr"] for row in tuning["grid"])
    chosen = next(row for row in tuning["grid"] if row["weight"] == tuning["chosen"])
    assert chosen["discovery"]["mrr"] == best
    assert not (out / "evaluation.json").exists()


def test_discovery_ranks_only_products_never_bought():
    """Customer 0 re-buys item 1 and tries item 3; customer 1 only re-buys: out of discovery."""
    targets = evaluate.Targets(
        mask=torch.tensor([[0, 1, 0, 1, 0], [0, 0, 1, 0, 0]], dtype=torch.bool),
        bought=torch.tensor([[0, 1, 1, 0, 0], [0, 0, 1, 0, 0]], dtype=torch.bool),
        small=torch.tensor([True, True]),
    )
    scores = torch.tensor([[-torch.inf, 9.0, 8.0, 1.0, 2.0], [-torch.inf, 1.0, 3.0, 2.0, 0.0]])
    ranks = evaluate.method_ranks(scores, targets)
    assert ranks["all"].tolist() == [1.0, 1.0]
    # customer 0 among never-bought items 3 and 4: item 3 (score 1) comes second
    assert ranks["discovery"].tolist() == [2.0]
    metrics = evaluate.cohort_metrics(ranks, targets.small)
    assert metrics["discovery"]["n"] == 1 and metrics["discovery"]["mrr"] == 0.5


def test_repeat_explore_splits_each_hit_by_its_best_placed_target():
    """Customer 0's best target is a repeat at rank 2, its best new one at rank 4; customer 1
    has only a new target, at rank 1; customer 2 ties (a repeat); customer 3 misses."""
    repeat = torch.tensor([2.0, torch.inf, 3.0, torch.inf])
    explore = torch.tensor([4.0, 1.0, 3.0, 30.0])
    split = evaluate.repeat_explore(repeat, explore)
    assert (split["hit@1_repeat"], split["hit@1_explore"]) == (0.0, 0.25)
    assert (split["hit@5_repeat"], split["hit@5_explore"]) == (0.5, 0.25)
    assert (split["hit@20_repeat"], split["hit@20_explore"]) == (0.5, 0.25)


def test_gain_interval_of_mrr():
    """k None: the ratio of mean reciprocal ranks; a method that always ranks 1 against one
    always at 2 gains exactly +100%."""
    first, second = [torch.ones(50)], [torch.full((50,), 2.0)]
    assert evaluate.gain_interval(first, second, None) == pytest.approx([1.0, 1.0])


def test_gains_where_the_reference_never_hits_are_none():
    never = [torch.full((5,), torch.inf)]
    hits = [torch.tensor([1.0, 3.0, torch.inf, 1.0, 2.0])]
    assert evaluate.gain_interval(hits, never, k=1) is None
    assert evaluate.relative_gain(0.4, 0.0) is None
    assert evaluate.relative_gain(0.3, 0.2) == pytest.approx(0.5)
    assert evaluate.percent(None) == "n/a" and evaluate.interval(None) == "[n/a]"


def test_evaluate_a_tiny_shop_writes_strict_json(tmp_path):
    """Four customers: cohorts with few or no customers and ratios over zero hits must not
    crash the run or put NaN into the JSON."""
    result = _evaluate_shop(tmp_path, customers=4, orders=4, cutoff="2011-01-25")
    assert result["protocol"]["customers"] == 4
    for res in result["results"].values():
        assert all(res[cohort]["n"] > 0 for cohort in res)


def test_evaluate_names_the_file_dates_when_the_cutoff_is_outside(tmp_path, capsys):
    data = tmp_path / "shop.csv"
    _shop(data, customers=5, orders=6)
    argv = ["--data", str(data), "--cutoff", "2030-01-01", "--out", str(tmp_path / "e")]
    assert evaluate.main([*argv, "--quiet"]) == 1
    said = capsys.readouterr().out
    assert "its orders run from 2011-01-03 to 2011-02-17" in said
    suggested = said.split("--cutoff ")[-1].split()[0]
    before, after = loading.split_at(loading.load_orders(data)[0], loading.epoch_seconds(suggested))
    assert set(before) & set(after)
    assert not (tmp_path / "e").exists()
    one_day = {"1": [(0.0, ["A"]), (3600.0, ["B"])], "2": [(7200.0, ["A"])]}
    assert "no customer has orders on two different days" in evaluate.cutoff_hint(one_day)


def test_evaluate_refuses_model_trained_past_cutoff(trained, tmp_path):
    tmp, data, _ = trained
    argv = ["--data", str(data), "--cutoff", "2011-02-10", "--artifact", str(tmp / "models")]
    assert evaluate.main([*argv, "--out", str(tmp_path)]) == 2


def test_fit_is_reproducible_at_two_threads():
    """Same seed at 2 torch threads: bit-identical weights; another seed: other weights.

    Orders on 6 days over 3,000 products: a batch's customers share few scoring moments, so
    `trend[catalogue_row]`'s backward adds many rows into the same place, which races across
    threads (and this test fails) unless `train.fit` turns deterministic algorithms on.
    """
    rng = np.random.default_rng(0)
    orders = {
        str(12000 + c): [
            (1.3e9 + day * 86400.0 + c, [str(21000 + i) for i in rng.choice(3000, 3, False)])
            for day in np.sort(rng.choice(6, size=4, replace=False))
        ]
        for c in range(100)
    }
    vocab = Vocab.build(orders)

    def weights(seed: int) -> dict[str, torch.Tensor]:
        cfg = train.TrainConfig(seed=seed, max_epochs=2, device="cpu")
        return train.fit(orders, vocab, cfg, progress=False)[0].state_dict()

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(2)
    try:
        first, again, other = weights(0), weights(0), weights(1)
    finally:
        torch.set_num_threads(threads)
    assert first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)
    assert torch.are_deterministic_algorithms_enabled() == deterministic  # fit restores it


def test_out_of_time_stops_before_an_epoch_that_would_end_past_the_budget():
    assert not train.out_of_time(elapsed_s=400.0, longest_epoch_s=100.0, budget_s=540.0)
    assert train.out_of_time(elapsed_s=450.0, longest_epoch_s=100.0, budget_s=540.0)
    assert train.out_of_time(elapsed_s=541.0, longest_epoch_s=0.0, budget_s=540.0)


def test_fit_asks_after_each_epoch_with_its_longest_epoch(monkeypatch):
    """`fit` passes the elapsed time, the longest epoch so far and the budget to `out_of_time`
    after every epoch, and stops when it says so."""
    asked = []

    def spy(elapsed_s: float, longest_epoch_s: float, budget_s: float) -> bool:
        asked.append((elapsed_s, longest_epoch_s, budget_s))
        return len(asked) == 2

    monkeypatch.setattr(train, "out_of_time", spy)
    orders = {
        str(12000 + c): [(1.3e9 + day * 86400.0, [str(21000 + (c + day) % 7)]) for day in range(3)]
        for c in range(20)
    }
    cfg = train.TrainConfig(max_epochs=5, patience=5, time_budget_s=123.0, device="cpu")
    _, summary = train.fit(orders, Vocab.build(orders), cfg, progress=False)
    assert summary["epochs_run"] == 2
    (elapsed_1, longest_1, budget_1), (elapsed_2, longest_2, _) = asked
    assert budget_1 == 123.0
    assert 0 < longest_1 <= elapsed_1 < elapsed_2  # epoch 1 counts from the start of fit
    assert longest_1 <= longest_2 <= elapsed_2
