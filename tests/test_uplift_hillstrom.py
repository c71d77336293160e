"""Hillstrom validation runner on tiny fixture CSVs with the real column layout."""

import json

import numpy as np
import pandas as pd
import pytest

from models.promotion import hillstrom
from models.promotion.uplift import UpliftModel
from models.promotion.uplift_metrics import uplift_at_k

HEADER = list(hillstrom.COLUMNS)
ROWS = [
    [10, "2) $100 - $200", 142.44, 1, 0, "Surburban", 0, "Phone", "Womens E-Mail", 0, 0, 0.0],
    [6, "3) $200 - $350", 329.08, 1, 1, "Rural", 1, "Web", "No E-Mail", 0, 0, 0.0],
    [7, "2) $100 - $200", 180.65, 0, 1, "Surburban", 1, "Web", "Womens E-Mail", 1, 0, 0.0],
    [9, "5) $500 - $750", 675.83, 1, 0, "Rural", 1, "Multichannel", "Mens E-Mail", 1, 1, 29.99],
    [2, "1) $0 - $100", 45.34, 1, 0, "Urban", 0, "Web", "No E-Mail", 0, 0, 0.0],
]


def write_fixture(path, rows=ROWS):
    pd.DataFrame(rows, columns=HEADER).to_csv(path, index=False)
    return path


@pytest.mark.parametrize("name", ["h.csv", "h.csv.gz"])
def test_loader_parses_fixture(tmp_path, name):
    df = hillstrom.load_hillstrom(write_fixture(tmp_path / name))
    assert list(df["arm"]) == ["womens", "control", "womens", "mens", "control"]
    assert df["spend"].tolist() == [0.0, 0.0, 0.0, 29.99, 0.0]
    x, names = hillstrom.features(df)
    assert x.shape == (5, len(names)) == (5, 11)
    row = dict(zip(names, x[3], strict=True))
    assert row["recency"] == 9 and row["history"] == pytest.approx(675.83)
    assert row["zip_code=Rural"] == 1 and row["zip_code=Urban"] == 0
    assert row["channel=Multichannel"] == 1 and row["channel=Web"] == 0


def test_loader_rejects_bad_files(tmp_path):
    bad_arm = [r.copy() for r in ROWS]
    bad_arm[0][8] = "SMS"
    with pytest.raises(ValueError, match="unknown segments"):
        hillstrom.load_hillstrom(write_fixture(tmp_path / "a.csv", bad_arm))
    pd.DataFrame(ROWS, columns=HEADER).drop(columns="visit").to_csv(tmp_path / "b.csv")
    with pytest.raises(ValueError, match="missing columns"):
        hillstrom.load_hillstrom(tmp_path / "b.csv")


def test_incremental_per_email_matches_uplift_at_k():
    rng = np.random.default_rng(0)
    y = (rng.random(3000) < 0.2).astype(float)
    treated = rng.random(3000) < 0.5
    score = np.round(rng.normal(size=3000), 1)  # with ties
    ours = hillstrom.incremental_per_email(y, score, treated, 0.3)
    assert ours == pytest.approx(
        uplift_at_k(y, score, treated.astype(int), strategy="overall", k=0.3)
    )


def test_targeting_by_true_effect_beats_everyone_and_random():
    rng = np.random.default_rng(1)
    n = 6000
    responsive = rng.random(n) < 0.3
    treated = rng.random(n) < 0.5
    y = (rng.random(n) < 0.1 + 0.2 * (treated & responsive)).astype(float)
    score = responsive + rng.normal(scale=0.1, size=n)
    cfg = hillstrom.Config(random_draws=50)
    m = hillstrom.evaluate_arm(y, score, treated, cfg, np.random.default_rng(0))
    assert m["policy_model"] > m["policy_random_hi"] > m["policy_random_lo"]
    assert m["policy_model"] > m["policy_everyone"] + 0.05
    blind = hillstrom.evaluate_arm(y, rng.random(n), treated, cfg, np.random.default_rng(0))
    assert m["qini"] > blind["qini"] + 0.1
    assert m["auuc"] > blind["auuc"] + 0.05
    assert m["capture"] == pytest.approx(0.3 * m["policy_model"] / m["policy_everyone"])


def synthetic_hillstrom(n: int, seed: int = 0) -> pd.DataFrame:
    """Hillstrom-shaped data where only women's e-mails to `womens == 1` customers work."""
    rng = np.random.default_rng(seed)
    segment = rng.choice(list(hillstrom.ARMS), size=n)
    womens = rng.integers(0, 2, n)
    p = (
        0.1
        + 0.3 * ((segment == "Womens E-Mail") & (womens == 1))
        + 0.05 * (segment == "Mens E-Mail")
    )
    visit = (rng.random(n) < p).astype(int)
    conversion = visit * (rng.random(n) < 0.3)
    history = rng.gamma(2.0, 120.0, n).round(2)
    return pd.DataFrame(
        {
            "recency": rng.integers(1, 13, n),
            "history_segment": "1) $0 - $100",
            "history": history,
            "mens": rng.integers(0, 2, n),
            "womens": womens,
            "zip_code": rng.choice(hillstrom.CATEGORIES["zip_code"], n),
            "newbie": rng.integers(0, 2, n),
            "channel": rng.choice(hillstrom.CATEGORIES["channel"], n),
            "segment": segment,
            "visit": visit,
            "conversion": conversion,
            "spend": conversion * history / 10,
        }
    )


def test_main_end_to_end_on_small_synthetic_file(tmp_path, capsys):
    data = tmp_path / "hillstrom.csv.gz"
    synthetic_hillstrom(2400).to_csv(data, index=False)
    out = tmp_path / "out"
    rc = hillstrom.main(
        ["--data", str(data), "--out", str(out), "--seeds", "2", "--targets", "visit", "spend"]
    )
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert (out / "qini.png").stat().st_size > 10_000
    womens = results["summary"]["visit"]["selected"]["womens"]
    assert len(womens["uplift_at_k"]["values"]) == 2
    assert womens["policy_model"]["mean"] > womens["policy_everyone"]["mean"]
    assert womens["qini"]["mean"] > 0
    spend = results["summary"]["spend"]["selected"]["womens"]
    assert spend["qini"] is None and spend["policy_model"]["mean"] is not None
    assert "class_transformation" not in results["summary"]["spend"]
    model = UpliftModel.load(out / "uplift_visit.joblib")
    assert model.treatment_arms == ["mens", "womens"]
    assert model.data_sha256 == results["model"]["data_sha256"]
    assert "uplift@30%" in capsys.readouterr().out


def test_best_email_policy_prefers_personalised_choice():
    rng = np.random.default_rng(2)
    n = 9000
    likes_mens = rng.random(n) < 0.5
    arm = rng.choice(np.array(["control", "mens", "womens"]), size=n)
    effect = 0.2 * np.where(likes_mens, arm == "mens", arm == "womens")
    y = (rng.random(n) < 0.1 + effect).astype(float)
    uplift = np.column_stack([likes_mens, ~likes_mens]).astype(float)  # columns: mens, womens
    m = hillstrom.best_email_policy(y, arm, uplift, ["mens", "womens"], 0.3)
    assert m["policy_everyone"] == pytest.approx(0.2, abs=0.03)
    assert m["policy_single"] == pytest.approx(0.1, abs=0.03)
    assert m["policy_model"] == pytest.approx(0.2, abs=0.05)
