"""Moments that matter (lifecycle triggers) and the policy's Aha message, on hand-made customers."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.aha_rules import AhaRule, load_aha_rules
from features.errors import InputError
from features.lifecycle import moment_triggers
from features.pipeline import build_features
from features.schema import parse_as_of, validate
from serving.policy import Message, PolicyConfig, decide

AS_OF = parse_as_of("2024-06-30")


@pytest.fixture
def moments() -> pd.DataFrame:
    """Features as of 2024-06-30 of customers who each lived one moment (or none) on that day."""
    tx = [("N", "2024-06-30 10:00"),                                     # first purchase today
          ("O2", "2024-01-05 10:00"),                                    # an old customer who opts in today
          ("R", "2024-06-01 10:00"), ("R", "2024-06-30 10:00"),          # second purchase today
          ("X", "2023-12-01 10:00"), ("X", "2024-06-30 10:00"),          # back after 212 days
          ("Q", "2024-04-01 12:00"),                                     # one order, 90.5 days ago: at risk today
          *[("L", f"2024-0{m}-15 10:00") for m in range(2, 6)], ("L", "2024-06-30 09:00"),  # fifth order today
          ("V", "2024-05-01 10:00"), ("V", "2024-06-01 10:00"),          # first review today
          ("Z", "2024-06-10 10:00")]                                     # nothing happened today
    tx = pd.DataFrame([(c, t, 20.0, f"{c}{i}") for i, (c, t) in enumerate(tx)],
                      columns=["customer_id", "timestamp", "amount", "order_id"])
    ev = pd.DataFrame([("O", "2024-06-30 08:00", "newsletter_optin"), ("O2", "2024-06-30 08:00", "newsletter_optin"),
                       ("V", "2024-06-30 12:00", "review"), ("Z", "2024-06-12 12:00", "review")],
                      columns=["customer_id", "timestamp", "event"])
    return build_features(validate(tx, "transactions"), AS_OF, validate(ev, "events")).set_index("customer_id")


def test_each_moment_fires_on_its_day_and_only_then(moments):
    got = dict(zip(moments.index, moment_triggers(moments, len(moments), lookback_days=1)))
    assert got == {
        "N": "first_communication,first_purchase", "O": "opt_in,first_communication", "O2": "opt_in",
        "R": "repeat_purchase", "X": "repeat_purchase,reactivated", "Q": "reactivation_due",
        "L": "repeat_purchase,became_loyal", "V": "first_advocacy", "Z": None,
    }
    assert moments.loc["Q", "lifecycle_stage"] == "at_risk"


def test_a_moment_exactly_one_lookback_old_belongs_to_the_previous_run():
    tx = validate(pd.DataFrame({"customer_id": ["N"], "timestamp": ["2024-06-30T00:00:00"], "amount": ["10"]}),
                  "transactions")
    runs = {day: moment_triggers(build_features(tx, parse_as_of(day)), 1, 1.0)[0]
            for day in ("2024-06-30T00:00:00", "2024-07-01T00:00:00")}  # datetime as-ofs, one day apart
    assert runs == {"2024-06-30T00:00:00": "first_communication,first_purchase", "2024-07-01T00:00:00": None}


def test_a_contact_since_first_seen_means_the_first_communication_happened(moments):
    contacted = (moments.index == "N")
    got = dict(zip(moments.index, moment_triggers(moments, len(moments), 1, contacted)))
    assert got["N"] == "first_purchase" and got["O"] == "opt_in,first_communication"


def test_a_longer_lookback_catches_the_moments_of_a_missed_night(moments):
    late = moments.assign(**{c: moments[c] + 1 for c in moments.columns if c.endswith("_days") or
                             c.startswith("days_")})  # the same customers seen one day later
    late["recency_over_gap"] = late["recency_days"] / late["gap_mean_days"]
    assert moment_triggers(late, len(late), lookback_days=1)[list(moments.index).index("N")] is None
    assert moment_triggers(late, len(late), lookback_days=2)[list(moments.index).index("N")] == \
        "first_communication,first_purchase"


def triggers_of(rows: list[tuple[str, str, float, str]], day: str = "2024-06-30",
                lookback: float = 1) -> dict[str, str | None]:
    """The moments of each customer on `day` (lookback 1 day) of hand-made (customer, time, amount, order) lines."""
    tx = validate(pd.DataFrame(rows, columns=["customer_id", "timestamp", "amount", "order_id"]), "transactions")
    feats = build_features(tx, parse_as_of(day)).set_index("customer_id")
    return dict(zip(feats.index, moment_triggers(feats, len(feats), lookback_days=lookback)))


def test_the_loyal_order_counts_when_several_orders_of_one_day_cross_it():
    before = [(c, f"2024-0{m}-15 10:00", 20.0, f"{c}{m}") for c in "LM" for m in range(2, 6)]  # four orders each
    got = triggers_of([*before, ("L", "2024-06-30 09:00", 20.0, "L6"), ("L", "2024-06-30 11:00", 20.0, "L7"),
                       *[("M", f"2024-06-30 1{h}:00", 20.0, f"M{h}x") for h in range(3)]])  # 4 -> 6 and 4 -> 7 orders
    assert got == {"L": "repeat_purchase,became_loyal", "M": "repeat_purchase,became_loyal"}


def test_a_comeback_with_two_orders_in_the_lookback_is_a_reactivation():
    got = triggers_of([("X", "2023-12-01 10:00", 20.0, "x0"), ("X", "2024-06-30 09:00", 20.0, "x1"),
                       ("X", "2024-06-30 15:00", 20.0, "x2")])
    assert got == {"X": "repeat_purchase,reactivated"}


def test_a_full_refund_of_an_old_order_is_no_new_first_purchase_and_no_lost_moment():
    at_risk_by_refund = [("S", "2024-01-01 10:00", 20.0, "s0"), ("S", "2024-05-20 10:00", 20.0, "s1"),
                         ("S", "2024-06-30 09:00", -20.0, "s1")]  # the last order refunded today: 181 days since s0
    got = triggers_of([
        ("F", "2024-05-01 10:00", 20.0, "f0"), ("F", "2024-06-30 08:00", -20.0, "f0"),  # refunded today ...
        ("F", "2024-06-30 10:00", 30.0, "f1"),                                        # ... and a new order today
        ("G", "2024-05-01 10:00", 20.0, "g0"), ("G", "2024-05-10 10:00", -20.0, "g0"),  # refunded long ago
        ("G", "2024-06-30 10:00", 30.0, "g1"),
        *at_risk_by_refund,
        ("T", "2023-12-01 10:00", 20.0, "t0"), ("T", "2024-01-01 10:00", 20.0, "t1"),  # at risk since April ...
        ("T", "2024-06-30 09:00", -20.0, "t0"),                                       # ... before this refund
        ("U", "2024-06-29 10:00", 20.0, "u0"), ("U", "2024-06-30 09:00", -20.0, "u0"),  # the only order refunded
    ])
    assert got == {"F": "repeat_purchase", "G": "repeat_purchase", "S": "reactivation_due", "T": None, "U": None}
    assert triggers_of(at_risk_by_refund, "2024-07-01") == {"S": None}  # once


def test_a_refund_that_moved_the_stage_fires_also_when_a_later_refund_kept_it():
    bought = [("V", "2023-12-13 10:00", 20.0, "a"), ("V", "2024-01-22 10:00", 20.0, "b"),
              ("V", "2024-06-10 10:00", 20.0, "c")]
    assert triggers_of(bought, "2024-06-29") == {"V": None}  # repeat
    refunds = [("V", "2024-06-30 10:00", -20.0, "c"),  # repeat -> at_risk ({a, b}: overdue) ...
               ("V", "2024-06-30 11:00", -20.0, "a")]  # ... and at_risk -> at_risk ({b}: one order, 160 days)
    assert triggers_of([*bought, *refunds]) == {"V": "reactivation_due"}
    assert triggers_of([*bought, *refunds], "2024-07-01") == {"V": None}  # once


def test_a_refund_after_the_time_rule_crossed_in_the_lookback_keeps_the_moment():
    bought = [("W", "2024-03-10 10:00", 20.0, "a"), ("W", "2024-04-01 10:00", 20.0, "b")]
    assert triggers_of(bought) == {"W": "reactivation_due"}  # at risk by time since 10:00 ({a, b}) ...
    refunded = [*bought, ("W", "2024-06-30 20:00", -20.0, "b")]  # ... still at risk after the refund ({a}: since June)
    assert triggers_of(refunded) == {"W": "reactivation_due"}
    assert triggers_of(refunded, "2024-07-01") == {"W": None}


def test_a_refund_netting_a_rounding_residue_is_a_full_refund():
    cents = [("R", "2024-01-01 10:00", 20.0, "r0"), ("R", "2024-05-20 10:00", 0.1, "r1"),
             ("R", "2024-05-20 10:00", 0.2, "r1"), ("R", "2024-06-30 09:00", -0.3, "r1")]  # nets 5.6e-17
    assert triggers_of(cents) == {"R": "reactivation_due"}  # as with 20.0 and -20.0


def test_a_free_sample_before_the_first_purchase_does_not_hide_it():
    sample = [("S", "2024-06-20 10:00", 0.0, "s0"), ("S", "2024-06-30 10:00", 40.0, "s1")]  # a 0.0 order first
    assert triggers_of(sample) == {"S": "first_purchase"}


def test_an_order_paid_after_an_empty_opening_line_is_a_purchase_of_the_payment_day():
    """An order opened with a 0.0 line (a quote) and paid 90 days later was dated by its first line: no first
    purchase on the payment day, and the customer looked 90 days quiet, at risk."""
    quote = [("P", "2024-04-01 10:00", 0.0, "p0"), ("P", "2024-06-30 10:00", 40.0, "p0")]
    assert triggers_of(quote) == {"P": "first_purchase"}
    assert triggers_of(quote, "2024-07-01") == {"P": None}


def test_an_exchange_charged_again_after_a_full_refund_is_a_purchase_of_the_new_charge():
    """Bought in January, refunded in February, charged again today on the same order id: a purchase today (not
    a first purchase: the customer's first order was in January), not a January purchase 181 days old."""
    exchange = [("E", "2024-01-01 10:00", 20.0, "e0"), ("E", "2024-02-01 10:00", -20.0, "e0"),
                ("E", "2024-06-30 10:00", 20.0, "e0")]
    feats = build_features(validate(pd.DataFrame(exchange, columns=["customer_id", "timestamp", "amount", "order_id"]),
                                    "transactions"), AS_OF).set_index("customer_id")
    assert feats.loc["E", "recency_days"] < 1 and feats.loc["E", "days_since_first_order"] > 180
    assert triggers_of(exchange) == {"E": "repeat_purchase"}


def test_nightly_moments_agree_with_the_day_by_day_features():
    """Point in time, on random histories whose orders gain lines later (payments after an empty line, refunds,
    re-charges, partial returns): each nightly run fires reactivation_due when the day's stage is a newly entered
    at_risk or lapsed stage (and only then, on quiet days), first_purchase when the first purchase appeared, and
    repeat_purchase when the number of purchases grew."""
    rng = np.random.default_rng(7)
    rows = []
    for c in range(80):
        t = pd.Timestamp("2024-01-01") + pd.Timedelta(hours=float(rng.uniform(0, 24 * 120)))
        for o in range(int(rng.integers(1, 5))):
            a, later = float(rng.integers(1, 5) * 10), pd.Timedelta(days=float(rng.uniform(1, 90)))
            lines = [[(t, a)], [(t, 0.0), (t + later, a)], [(t, a), (t + later / 3, -a), (t + later, a)],
                     [(t, a), (t + later / 3, -a / 2)], [(t, a), (t + later / 3, -a)]][int(rng.integers(5))]
            rows += [(f"c{c}", when, amount, f"c{c}o{o}") for when, amount in lines]
            t += pd.Timedelta(days=float(rng.exponential(40)))
    tx = validate(pd.DataFrame(rows, columns=["customer_id", "timestamp", "amount", "order_id"]), "transactions")
    before = None
    for day in pd.date_range("2024-01-02", "2024-09-30", freq="D"):
        f = build_features(tx, day).set_index("customer_id")
        fired = pd.Series(moment_triggers(f, len(f)), index=f.index).fillna("")
        if before is not None:
            b = before.reindex(f.index)
            quiet = ~f.index.isin(tx.loc[(tx["timestamp"] > day - pd.Timedelta(days=1))
                                         & (tx["timestamp"] <= day), "customer_id"])
            entered = f["lifecycle_stage"].isin(["at_risk", "lapsed"]) & (b["lifecycle_stage"] != f["lifecycle_stage"])
            react = fired.str.contains("reactivation_due")
            assert (react == entered)[entered | quiet].all(), day
            first = (b["n_orders"].fillna(0) == 0) & (f["n_orders"] >= 1)
            assert (fired.str.contains("first_purchase") == first)[b["days_since_first_order"].isna()].all(), day
            grew = (b["n_orders"] >= 1) & (f["n_orders"] > b["n_orders"])
            assert fired.str.contains("repeat_purchase")[grew].all(), day
        before = f


def test_a_lookback_longer_than_the_new_days_still_reports_the_stage_entered_within_it():
    one = [("A", "2023-01-01 10:00", 20.0, "a0")]  # at risk from 2023-04-01 10:00 (90 days), a purchase 100 days ago
    fired = triggers_of(one, "2023-04-11", lookback=120)["A"].split(",")  # all three happened within 120 days
    assert fired == ["first_communication", "first_purchase", "reactivation_due"]


def aha_config(*rules: AhaRule) -> PolicyConfig:
    messages = {"second_purchase_nudge": Message("second_purchase_nudge", "second", ("new",), {"email": 0.1},
                                                 aha=True),
                "reactivation": Message("reactivation", "react", ("at_risk",), {"email": 0.1})}
    return PolicyConfig(channels={"email": 0.1}, messages=messages, new_customer_delay_days=1.0, aha_rules=rules)


def test_new_customers_get_the_top_aha_action_they_have_not_reached():
    config = aha_config(AhaRule("app_session", 3, 7), AhaRule("email_open", 1, 30))
    rows = pd.DataFrame({
        "customer_id": list("abcde"), "as_of": AS_OF, "n_orders": [1, 1, 1, 1, 2],
        "lifecycle_stage": ["new", "new", "new", "new", "at_risk"], "expected_value": 50.0, "tenure_days": 5.0,
        "recency_days": 5.0, "aha_app_session_first_7d": [1, 3, 4, np.nan, 0],
        "aha_email_open_first_30d": [0, 0, 2, np.nan, 0]})
    out = decide(rows, config).set_index("customer_id")
    assert out["message"].tolist() == ["aha_app_session", "aha_email_open", "second_purchase_nudge",
                                       "second_purchase_nudge", "reactivation"]
    assert "at least 3 app_session within 7 days of the first purchase (1 so far" in out.loc["a", "reasons"]
    assert "correlational" in out.loc["a", "reasons"] and "Aha" not in out.loc["c", "reasons"]
    assert out.loc["a", "priority"] == pytest.approx(0.1 * 50 - 0.1)  # the message's priors and cost still apply


def test_only_significant_positive_rules_are_read_best_first(tmp_path):
    rules = pd.DataFrame({"action": ["app_session", "chat", "return_orders", "email_open", "review"],
                          "min_count": [3, 1, 1, 1, 2], "within_days": [7, 3, 30, 14, 30],
                          "lift": [1.6, 1.4, 0.7, 1.2, 1.1], "p_adjusted": [1e-9, 0.2, 1e-5, 1e-3, 1e-2],
                          "diff": [0.2, 0.1, -0.1, 0.05, 0.03]})
    rules.to_csv(tmp_path / "aha_rules.csv", index=False)
    assert load_aha_rules(tmp_path / "aha_rules.csv", max_rules=2) == (AhaRule("app_session", 3, 7),
                                                                      AhaRule("email_open", 1, 14))
    rules.drop(columns="within_days").to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(InputError, match="bad.csv: column 'within_days' is missing"):
        load_aha_rules(tmp_path / "bad.csv")
