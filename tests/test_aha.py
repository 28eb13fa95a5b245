"""Aha-moment discovery: planted moment recovered, hand-computed metrics, row-order invariance, CLI end to end."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.__main__ import main
from features.adapters import adapt
from features.aha import RULE_COLUMNS, action_column, action_counts, discover, threshold_metrics
from features.aha_advice import _two_proportion_n
from features.errors import InputError, run_cli
from features.pipeline import build_features
from features.schema import parse_as_of, validate

AS_OF = parse_as_of("2024-12-31")
FIRST = pd.Timestamp("2024-01-01 10:00")


def _hand_made() -> dict[str, pd.DataFrame]:
    """Six behaviour patterns x 10 customers each; first purchase 2024-01-01 10:00 for all."""
    patterns = {  # app_session days after the first purchase, day of the second purchase (None: never)
        "A": ([1, 2, 3], 20),     # reaches 3 sessions; comes back on day 20 (within 7 + 30)
        "B": ([1, 2, 3], None),   # reaches 3 sessions; never comes back
        "C": ([2], 30),           # one session; comes back on day 30
        "D": ([], 100),           # no session; comes back only after the horizon
        "E": ([], 5),             # second purchase on day 5: an early repeater for d = 7, at risk for d <= 3
        "F": ([-3, 1, 2, 3, 4, 8], 10),  # a session before the first purchase and one on day 8 do not count at d = 7
    }
    tx, ev = [], []
    for p, (sessions, second) in patterns.items():
        for i in range(10):
            cid = f"{p}{i}"
            tx.append([cid, FIRST, 20.0, f"{cid}-1", "app" if p == "A" else "web", 10.0 if p == "A" else 2.0])
            if second is not None:
                oid = None if p == "C" else f"{cid}-2"  # no order id: the order is customer + timestamp
                tx.append([cid, FIRST + pd.Timedelta(days=second), 30.0, oid, "web", 3.0])
            ev += [[cid, FIRST + pd.Timedelta(days=d), "app_session"] for d in sessions]
            ev.append([cid, FIRST + pd.Timedelta(days=40), "review"])
    tx.append(["G0", FIRST, -5.0, "G0-r", "web", -1.0])  # only a return: never in the cohort
    tx.append(["H0", "2025-01-02", 50.0, "H0-1", "web", 5.0])  # first purchase after as-of: not seen at all
    tx.append(["B0", "2025-01-02", 50.0, "B0-2", "web", 5.0])  # B0's return after as-of changes nothing
    ev.append(["Z0", FIRST, "app_session"])  # an unknown customer
    tx = pd.DataFrame(tx, columns=["customer_id", "timestamp", "amount", "order_id", "channel", "margin"])
    ev = pd.DataFrame(ev, columns=["customer_id", "timestamp", "event"])
    return {"transactions": validate(tx, "transactions"), "events": validate(ev, "events")}


def test_metrics_of_hand_made_example_match_hand_computation():
    data = _hand_made()
    res = discover(data["transactions"], data["events"], AS_OF, within_days=7, horizon_days=30, min_coverage=0.02)
    assert res.cohort.n == 60 and res.params["windows"] == [1, 3, 7]
    g = res.grid.set_index(["action", "min_count", "within_days"])
    row = g.loc[("app_session", 3, 7)]  # at risk A,B,C,D,F = 50; reached A,B,F = 30; retained A,C,F
    assert row["n"] == 50 and row["early_repeaters"] == 10
    assert row["coverage"] == pytest.approx(0.6)
    assert row["rate_if"] == pytest.approx(2 / 3) and row["precision"] == pytest.approx(2 / 3)
    assert row["rate_else"] == pytest.approx(0.5)
    assert row["lift"] == pytest.approx(4 / 3)
    assert row["recall"] == pytest.approx(2 / 3)
    assert row["phi"] == pytest.approx(1 / 6)  # (20*10 - 10*10) / sqrt(30*20*30*20)
    assert g.loc[("app_session", 4, 7), "n_reached"] == 10  # only F: its day-8 and pre-purchase sessions do not count
    d3 = g.loc[("app_session", 1, 3)]  # all 60 at risk on day 3; E comes back on day 5, within (3, 33]
    assert d3["n"] == 60 and d3["rate_else"] == pytest.approx(0.5) and d3["phi"] == pytest.approx(0.25)
    assert g.loc[("app_orders", 1, 7), "n_reached"] == 10 and g.loc[("high_margin_lines", 1, 7), "n_reached"] == 10
    best = res.rules.set_index("action").loc["app_session"]
    assert (best["min_count"], best["within_days"]) == (1, 7)  # phi 0.612 = 300 / sqrt(40*10*30*20)
    assert best["phi"] == pytest.approx(300 / np.sqrt(40 * 10 * 30 * 20))
    assert list(res.rules.columns[:9]) == RULE_COLUMNS


def test_orders_are_the_feature_pipelines_orders():
    day = pd.Timedelta(days=1)
    tx = validate(pd.DataFrame([
        ["A", FIRST, 20.0, "o1", "web"],
        ["A", FIRST + day, -5.0, None, "web"],      # lines without an order id: one order per customer and time
        ["A", FIRST + day, -3.0, None, "app"],
        ["A", FIRST + 2 * day, -4.0, None, "web"],
        ["B", FIRST, 30.0, "o1", "app"],            # A's order id: still B's own order
        ["B", FIRST + day, -2.0, None, "web"],      # A's return time: B's own return
    ], columns=["customer_id", "timestamp", "amount", "order_id", "channel"]), "transactions")
    ids, counts = action_counts(tx, None, (("return_orders", 3), ("app_orders", 1)))
    assert list(ids) == ["A", "B"]
    assert counts[action_column("return_orders", 3)].tolist() == [2, 1]
    assert counts[action_column("app_orders", 1)].tolist() == [0, 1]  # an app line in a return is no app order
    assert build_features(tx, AS_OF)["n_return_orders"].tolist() == [2, 1]


def test_no_eligible_threshold_gives_an_empty_ranking_and_still_a_report(tmp_path):
    from features.aha_report import run_aha

    data = _hand_made()
    ev = data["events"].loc[data["events"]["customer_id"].str.startswith("A")]  # coverage 10/50 at most
    found = run_aha(data["transactions"], ev, AS_OF, tmp_path / "aha", within_days=7, horizon_days=30,
                    min_coverage=0.3)
    assert found["rules"].empty and found["experiment"] is None and found["earn"].empty
    assert list(pd.read_csv(tmp_path / "aha" / "aha_rules.csv").columns[:9]) == RULE_COLUMNS
    assert "No rule separates" in (tmp_path / "aha" / "aha_report.html").read_text()


def test_threshold_metrics_and_power_calculation_match_references():
    m = threshold_metrics(100.0, 40.0, np.array([50]), np.array([30])).iloc[0]
    assert (m["coverage"], m["rate_if"], m["rate_else"], m["recall"]) == pytest.approx((0.5, 0.6, 0.2, 0.75))
    assert m["phi"] == pytest.approx((30 * 40 - 20 * 10) / np.sqrt(50 * 50 * 40 * 60))
    assert m["diff_low"] < 0.4 < m["diff_high"] and m["phi_low"] < m["phi"] < m["phi_high"]
    assert _two_proportion_n(0.5, 0.6, 1.0, 0.05, 0.8) == 388  # the textbook 388 per group


@pytest.fixture(scope="module")
def world():
    from features.simulate import simulate_world

    return simulate_world(n_customers=5000, seed=1)


def test_planted_aha_moment_of_the_simulator_is_recovered_exactly(world):
    res = discover(world.transactions, world.events, parse_as_of("2025-12-31"))
    top = res.rules.iloc[0]
    assert (top["action"], top["min_count"], top["within_days"]) == ("app_session", 3, 7)
    assert top["p_adjusted"] < 1e-6 and top["rate_if"] > top["rate_else"]


def test_results_do_not_change_when_rows_are_reordered(world):
    as_of = parse_as_of("2025-12-31")
    tx, ev = world.transactions.iloc[:40_000], world.events.iloc[:30_000]
    a = discover(tx, ev, as_of)
    rng = np.random.default_rng(0)
    b = discover(tx.iloc[rng.permutation(len(tx))], ev.iloc[rng.permutation(len(ev))], as_of)
    pd.testing.assert_frame_equal(a.rules, b.rules)
    pd.testing.assert_frame_equal(a.grid, b.grid)


def _retail_files(tmp_path):
    tables = adapt("online_retail", Path(__file__).parent / "data" / "online_retail_ii_sample.csv")
    tx = validate(tables["transactions"], "transactions")
    tx_path = tmp_path / "transactions.csv"
    tx.to_csv(tx_path, index=False)
    first = tx.loc[tx["amount"] > 0].groupby("customer_id")["timestamp"].min()
    rows = []
    for i, (cid, t) in enumerate(first.items()):  # a tiny events file: sessions for every other customer
        rows += [[cid, t + pd.Timedelta(hours=h), "app_session"] for h in range(1 + (i % 2) * 2)]
        if i % 3 == 0:
            rows.append([cid, t + pd.Timedelta(days=2), "review"])
    ev_path = tmp_path / "events.csv"
    pd.DataFrame(rows, columns=["customer_id", "timestamp", "event"]).to_csv(ev_path, index=False)
    return tx_path, ev_path


def test_online_retail_sample_runs_end_to_end_and_renders_the_report(tmp_path, capsys):
    tx_path, ev_path = _retail_files(tmp_path)
    out = tmp_path / "aha"
    assert main(["aha", "--transactions", str(tx_path), "--events", str(ev_path), "--as-of", "2010-12-09",
                 "--within-days", "7", "--horizon-days", "60", "--out", str(out)]) == 0
    rules = pd.read_csv(out / "aha_rules.csv")
    assert list(rules.columns[:9]) == RULE_COLUMNS and len(rules) >= 1
    assert (out / "aha_grid.csv").exists() and (out / "earn_table.csv").exists()
    html = (out / "aha_report.html").read_text()
    assert html.count("<img") == 3 and "base64," in html
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aha", "events.csv", "transactions.csv"]  # no staging left


def test_bad_inputs_give_one_line_errors_and_write_nothing(tmp_path, capsys, monkeypatch):
    tx_path, ev_path = _retail_files(tmp_path)
    out = tmp_path / "aha"
    with pytest.raises(InputError, match="--events is required"):
        main(["aha", "--transactions", str(tx_path), "--as-of", "2010-12-09", "--out", str(out)])
    with pytest.raises(InputError, match="only .* customers with a fully observed first-purchase window"):
        main(["aha", "--transactions", str(tx_path), "--events", str(ev_path), "--as-of", "2010-03-01",
              "--out", str(out)])
    with pytest.raises(SystemExit) as exc:
        run_cli(main, ["aha", "--transactions", str(tx_path), "--events", str(tmp_path / "nope.csv"),
                       "--as-of", "2010-12-09", "--out", str(out)])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: ")
    import features.aha_report as report

    monkeypatch.setattr(report, "render_html", lambda *a: 1 / 0)  # a failure while writing leaves nothing
    with pytest.raises(ZeroDivisionError):
        main(["aha", "--transactions", str(tx_path), "--events", str(ev_path), "--as-of", "2010-12-09",
              "--within-days", "7", "--horizon-days", "60", "--out", str(out)])
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["events.csv", "transactions.csv"]
