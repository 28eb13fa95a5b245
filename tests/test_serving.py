"""The HTTP service (in-process, no port) and the nightly batch, on one small model trained once per session."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="kairos-prom-"))
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")

from conftest import register_small_champion

from features.errors import InputError
from features.schema import parse_as_of
from serving.scoring import SCORE_COLUMNS

pytestmark = pytest.mark.slow
AS_OF = "2025-12-31"


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """A simulated world, a small registered champion in a temporary MLflow store, and its feature snapshot."""
    from features.simulate import simulate_world, write_world

    d = tmp_path_factory.mktemp("serving")
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{d}/mlflow.db")
    mp.setenv("KAIROS_CONTACT_DB", f"sqlite:///{d}/contacts.db")
    mp.chdir(d)
    w = simulate_world(n_customers=1200, seed=3)
    paths = write_world(w, d / "data")
    as_of = parse_as_of(AS_OF)
    model, version, feats = register_small_champion(w, as_of, "test-serving", n_estimators=40)
    feats.to_parquet(d / "features.parquet", index=False)
    mp.setenv("KAIROS_MODEL_URI", "models:/kairos@champion")
    mp.setenv("KAIROS_FEATURES", str(d / "features.parquet"))
    yield SimpleNamespace(dir=d, paths=paths, world=w, model=model, version=version, features=feats, as_of=as_of)
    mp.undo()


@pytest.fixture(scope="session")
def client(world):
    """The service app, built once per process (BentoML's ASGI app does not survive a second build)."""
    from starlette.testclient import TestClient

    from serving.service import Kairos

    with TestClient(Kairos.to_asgi()) as c:
        yield c


def ids_where(world, cond) -> list[str]:
    return world.features.loc[cond(world.features), "customer_id"].tolist()


def test_score_by_id_answers_the_contract_shape(client, world):
    ids = ids_where(world, lambda f: f["n_orders"] > 0)[:5]
    r = client.post("/score", json={"customers": [{"customer_id": i} for i in ids]})
    assert r.status_code == 200
    body = r.json()
    assert body["model_version"] == world.version
    assert [x["customer_id"] for x in body["results"]] == ids
    for x in body["results"]:
        assert list(x) == SCORE_COLUMNS
        assert 0 <= x["p_purchase"] <= 1 and x["action"] in ("nudge", "hold") and x["reasons"]
        assert x["model_version"] == world.version
    many = [x for x in body["results"] if x["n_orders"] > 1]
    assert all(x["p_second_purchase"] is None for x in many)  # NaN becomes null


@pytest.mark.parametrize("body, field", [
    ({"customers": "x"}, "customers"),
    ({"nope": []}, "customers"),
    ({"customers": []}, "customers"),
    ({"customers": [{"customer_id": str(i)} for i in range(1001)]}, "customers"),
    ({"customers": [{"customer_id": "A"}], "recrod": False}, "recrod"),  # a typo must not record
])
def test_bad_bodies_get_400_naming_the_field(client, body, field):
    r = client.post("/score", json=body)
    assert r.status_code == 400
    assert field in r.text


@pytest.mark.parametrize("item, error", [
    ({"id": "A"}, "customer_id: Field required; id: Extra inputs are not permitted"),
    ({"customer_id": 7}, "customer_id: Input should be a valid string"),
    ({"customer_id": "A", "transactions": [{"amount": "ten"}]}, "transactions[0].timestamp: Field required"),
    ({"customer_id": "A", "transactions": [{"timestamp": "2025-01-01", "amount": "ten"}]}, "transactions[0].amount"),
    ({"customer_id": "A", "transactions": [{"timestamp": "soon", "amount": 1}]}, "transactions[0].timestamp"),
    ({"customer_id": "A", "transactions": [], "as_of": "yesterday-ish"}, "as_of: Value error, --as-of"),
    ({"customer_id": "A", "transactions": [{"timestamp": 20251201, "amount": 1}]}, "not a number"),  # Unix seconds
    ({"customer_id": "A", "transactions": [{"timestamp": "2025-12-01", "amount": True}]}, "not true or false"),
    ("A", "item: Input should be a valid dictionary"),
])
def test_malformed_items_are_answered_per_item_naming_the_field(client, world, item, error):
    """One malformed customer among many gets its own error; the others are answered (was a 400 for everyone)."""
    known = world.features["customer_id"].iloc[0]
    r = client.post("/score", json={"customers": [{"customer_id": known}, item]})
    assert r.status_code == 200
    ok, bad = r.json()["results"]
    assert "error" not in ok and ok["customer_id"] == known
    assert bad["error"].startswith("invalid item: ") and error in bad["error"] and bad["p_purchase"] is None
    assert bad["customer_id"] == (item.get("customer_id") if isinstance(item, dict) and
                                  isinstance(item.get("customer_id"), str) else None)


def test_malformed_json_gets_400(client):
    r = client.post("/score", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400


def test_unknown_customers_are_answered_per_item(client, world):
    known = world.features["customer_id"].iloc[0]
    r = client.post("/next_best_action", json={"customers": [{"customer_id": "NO-SUCH"}, {"customer_id": known}],
                                               "record": False})
    assert r.status_code == 200
    unknown, ok = r.json()["results"]
    assert "unknown customer_id" in unknown["error"] and unknown["p_purchase"] is None
    assert "error" not in ok and ok["customer_id"] == known


def _raw_item(world, cid: str, as_of: str = AS_OF, attributes: bool = True) -> dict:
    """The request item of a simulated customer's whole history (transactions, events, attributes)."""
    w = world.world
    tx = w.transactions.loc[w.transactions["customer_id"] == cid].drop(columns="customer_id")
    ev = w.events.loc[w.events["customer_id"] == cid].drop(columns="customer_id")
    attrs = w.customers.loc[w.customers["customer_id"] == cid].drop(columns="customer_id").iloc[0]
    return {"customer_id": cid, "as_of": as_of,
            "transactions": [{k: (v.isoformat() if isinstance(v, pd.Timestamp) else v) for k, v in row.items()
                              if not (isinstance(v, float) and np.isnan(v))} for row in tx.to_dict("records")],
            "events": [{"timestamp": t.isoformat(), "event": e, **({"value": v} if pd.notna(v) else {})}
                       for t, e, v in zip(ev["timestamp"], ev["event"], ev["value"])],
            **({"attributes": {k: (v.strftime("%Y-%m-%d") if isinstance(v, pd.Timestamp) else v)
                               for k, v in attrs.items()}} if attributes else {})}


def test_by_id_and_raw_history_give_the_same_scores(client, world):
    cid = ids_where(world, lambda f: f["n_orders"] >= 3)[0]
    item = _raw_item(world, cid)
    # two requests: in one, the second copy of a nudged customer_id is held (nudged once per request)
    (by_id,), (raw,) = (client.post("/score", json={"customers": [it]}).json()["results"]
                        for it in ({"customer_id": cid}, item))
    assert "error" not in raw, raw.get("error")
    for col in ("n_orders", "lifecycle_stage", "as_of", "action", "channel", "message"):
        assert by_id[col] == raw[col], col
    for col in ("p_purchase", "expected_value", "priority"):
        assert by_id[col] == pytest.approx(raw[col], rel=1e-9), col
    assert by_id["reasons"] == raw["reasons"]


def test_raw_items_scored_together_equal_each_scored_alone(world, scorer, monkeypatch):
    import features.pipeline
    from serving.api import CustomerIn

    ids = ids_where(world, lambda f: f["n_orders"] >= 1)[:6]
    items = [_raw_item(world, ids[0]), _raw_item(world, ids[1]), _raw_item(world, ids[2], attributes=False),
             _raw_item(world, ids[3], as_of="2025-10-31"), _raw_item(world, ids[4]),
             {**_raw_item(world, ids[5]), "customer_id": ids[0]},  # the same id with another history
             {"customer_id": "NO-HISTORY"}, {"customer_id": "BAD", "transactions": [{"timestamp": "2025-01-01",
                                                                                   "amount": 1.0, "customer_id": "X"}]},
             {"customer_id": "NEW", "transactions": [{"timestamp": "2025-12-01", "amount": 20.0}], "as_of": AS_OF,
              "attributes": {"segment": 3}}]  # an attribute of another type than the others' segment: its own group
    items[6]["events"] = [{"timestamp": "2025-12-30", "event": "app_session"}]
    parsed = [CustomerIn(**it) for it in items]
    now = pd.Timestamp("2026-01-01")
    real, builds = features.pipeline.build_features, []
    monkeypatch.setattr(features.pipeline, "build_features", lambda *a, **k: builds.append(1) or real(*a, **k))
    together = scorer.score(parsed, with_reasons=True, now=now)
    # one build per group (same as-of and attribute types, distinct ids): items 0, 1 and 4 share theirs
    assert len(builds) == 6
    alone = [scorer.score([it], with_reasons=True, now=now)[0] for it in parsed]
    assert "customer_id differs" in together[7]["error"] and "error" not in together[0]
    for i, (a, b) in enumerate(zip(together, alone)):
        if i == 5:  # a repeated id: held after item 0's nudge; otherwise the same answer
            assert b["action"] != "nudge" or a["action"] == "hold"
            a = {**a, "action": b["action"], "channel": b["channel"], "message": b["message"], "reasons": b["reasons"]}
        assert a.keys() == b.keys(), i
        for k in a:
            assert a[k] == (pytest.approx(b[k], rel=1e-12) if isinstance(b[k], float) else b[k]), (i, k)


def test_a_raw_item_with_an_as_of_is_decided_as_of_then_not_at_the_wall_clock(scorer):
    from serving.api import CustomerIn

    item = CustomerIn(customer_id="NEW-2", as_of="2025-12-31",
                      transactions=[{"timestamp": "2025-12-31T10:00:00", "amount": 40.0}])
    (res,) = scorer.score([item], with_reasons=False, now=pd.Timestamp("2026-11-23 12:00"))
    assert res["action"] == "hold" and res["reasons"].startswith("hold: first purchase 1 days ago")  # as the batch


def test_raw_history_of_a_new_customer_is_scored_on_the_fly(client):
    hist = [{"timestamp": "2025-06-01T10:00:00", "amount": 42.0}]
    r = client.post("/score", json={"customers": [{"customer_id": "NEW-1", "transactions": hist}]})
    assert r.status_code == 200
    row = r.json()["results"][0]
    assert row["n_orders"] == 1 and row["p_second_purchase"] is not None


def test_raw_history_gets_the_aha_message_and_the_moments_of_the_batch_code(world):
    from dataclasses import replace

    from features.aha_rules import AhaRule
    from serving.api import CustomerIn, Scorer
    from serving.policy import load_policy

    config = replace(load_policy(), new_customer_delay_days=0.0, aha_rules=(AhaRule("app_session", 3, 7),))
    now = pd.Timestamp("2025-06-01 12:00")
    item = CustomerIn(customer_id="NEW-2", transactions=[{"timestamp": "2025-06-01T00:00:00", "amount": 90.0}],
                      events=[{"timestamp": "2025-06-01T06:00:00", "event": "app_session"}])
    row = Scorer(world.model, world.version, config).score([item], with_reasons=False, now=now)[0]
    assert "at least 3 app_session within 7 days of the first purchase (1 so far" in row["reasons"]
    assert row["message"] in ("aha_app_session", None)  # None only when held (e.g. a low expected value)
    assert row["triggers"] == "first_communication,first_purchase"


def test_next_best_action_records_the_nudge_and_the_cooldown_holds(client, world):
    ids = ids_where(world, lambda f: f["lifecycle_stage"].isin(["loyal", "at_risk"]))[:200]
    first = client.post("/next_best_action", json={"customers": [{"customer_id": i} for i in ids]}).json()["results"]
    nudged = [x["customer_id"] for x in first if x["action"] == "nudge"]
    assert nudged
    again = client.post("/score", json={"customers": [{"customer_id": nudged[0]}]}).json()["results"][0]
    assert again["action"] == "hold" and "cooldown" in again["reasons"]


@pytest.fixture
def scorer(world, tmp_path):
    """A Scorer on the session's model and snapshot with a contact log of its own."""
    from serving.api import Scorer
    from serving.contact_log import ContactLog
    from serving.policy import load_policy, required_columns
    from serving.snapshot import Snapshot

    config = load_policy()
    snap = Snapshot(world.features, world.model, required_columns(config))
    return Scorer(world.model, world.version, config, snap, ContactLog(f"sqlite:///{tmp_path}/contacts.db"))


def test_the_service_decides_without_the_policy_budget(world, tmp_path, monkeypatch):
    from dataclasses import replace

    from serving.api import CustomerIn, Scorer
    from serving.policy import DEFAULT_POLICY, load_policy, required_columns
    from serving.service import service_policy
    from serving.snapshot import Snapshot

    policy = tmp_path / "policy.yaml"
    policy.write_text(Path(DEFAULT_POLICY).read_text().replace("\nbudget: null", "\nbudget: 0.05"))  # one push
    monkeypatch.setenv("KAIROS_POLICY", str(policy))
    budgeted = load_policy(policy)
    assert budgeted.budget == 0.05
    snap = Snapshot(world.features, world.model, required_columns(budgeted))
    items = [CustomerIn(customer_id=i) for i in ids_where(world, lambda f: f["lifecycle_stage"].isin(["loyal",
                                                                                                     "at_risk"]))[:100]]

    def answers(config):
        return Scorer(world.model, world.version, config, snap).score(items, with_reasons=False,
                                                                      now=world.as_of + pd.Timedelta(days=1))

    capped, served = answers(budgeted), answers(service_policy())
    assert sum(r["action"] == "nudge" for r in capped) <= 1  # the decision path applies a budget it is given
    assert any(r["reasons"].startswith("hold: over the batch budget") for r in capped)
    assert served == answers(replace(budgeted, budget=None))  # the service's policy has none: every nudge stays
    assert sum(r["action"] == "nudge" for r in served) > 1


def test_a_repeated_customer_id_sees_its_contacts_and_is_nudged_and_recorded_once(world, scorer):
    from serving.api import CustomerIn

    now = world.as_of + pd.Timedelta(days=1)
    ids = ids_where(world, lambda f: f["lifecycle_stage"].isin(["loyal", "at_risk"]))[:100]
    answers = scorer.score([CustomerIn(customer_id=i) for i in ids], with_reasons=False, now=now)
    a, b = [r["customer_id"] for r in answers if r["action"] == "nudge"][:2]
    items = [CustomerIn(customer_id=c) for c in (a, b, a, a)]
    first = scorer.score(items, with_reasons=False, now=now)
    assert [r["action"] for r in first] == ["nudge", "nudge", "hold", "hold"]
    assert first[2]["reasons"].startswith("hold: customer_id repeated in this request, item 0 gets the nudge")
    assert scorer.record(first, now) == 2
    later = scorer.score(items, with_reasons=False, now=now + pd.Timedelta(days=1))
    assert all(r["action"] == "hold" and "cooldown" in r["reasons"] for r in later)  # every copy: was only the first


def test_an_unexpected_error_in_one_raw_item_answers_that_item_and_is_logged(world, scorer, monkeypatch, caplog):
    import logging

    import features.pipeline
    from serving.api import CustomerIn

    real = features.pipeline.build_features

    def fails_for_bad(tx, *args, **kw):
        if (tx["customer_id"] == "BAD").any():
            raise ZeroDivisionError("a bug")
        return real(tx, *args, **kw)

    monkeypatch.setattr(features.pipeline, "build_features", fails_for_bad)
    logging.getLogger("bentoml.kairos").addHandler(caplog.handler)  # BentoML may stop propagation to the root
    try:
        tx = [{"timestamp": "2025-12-20", "amount": 30.0}]
        res = scorer.score([CustomerIn(customer_id=c, transactions=tx) for c in ("BAD", "OK")], with_reasons=False)
    finally:
        logging.getLogger("bentoml.kairos").removeHandler(caplog.handler)
    assert res[0]["error"] == "internal error while scoring this item (logged)" and "error" not in res[1]
    assert res[1]["action"] in ("nudge", "hold")
    logged = [r for r in caplog.records if "customer_id BAD" in r.getMessage()]
    assert logged and all(r.exc_info[0] is ZeroDivisionError for r in logged)


def test_one_bad_raw_item_among_many_costs_a_few_group_builds_and_only_it_fails(scorer, monkeypatch):
    """A bad item used to send its whole group to item-by-item scoring: 1,000 items took longer than the
    request's 60 s timeout (504 for everyone). Halving down to the bad item answers the others in a few builds."""
    import features.pipeline
    from serving.api import CustomerIn

    items = [CustomerIn(customer_id=f"M{i}", as_of=AS_OF, transactions=[{"timestamp": "2025-12-01", "amount": 10.0}])
             for i in range(64)]
    items[37] = CustomerIn(customer_id="M37", as_of=AS_OF, transactions=[{"timestamp": "9999-01-01", "amount": 1.0}])
    real, builds = features.pipeline.build_features, []
    monkeypatch.setattr(features.pipeline, "build_features", lambda *a, **k: builds.append(1) or real(*a, **k))
    res = scorer.score(items, with_reasons=False, now=pd.Timestamp("2026-01-01"))
    assert [i for i, r in enumerate(res) if "error" in r] == [37] and "timestamp" in res[37]["error"]
    assert all(r["n_orders"] == 1 for i, r in enumerate(res) if i != 37)
    assert len(builds) <= 2 * 6  # at most two builds per halving of 64 (the bad half fails in validation)


def test_ids_are_read_as_the_batch_reads_them(client, world):
    """' C1 ' and '123.0' are the customers C1 and 123, as in the batch and the contact log: a raw history under
    ' new1 ' was scored as a customer without any purchase, and a padded id was unknown to the snapshot."""
    known = world.features["customer_id"].iloc[0]
    hist = [{"timestamp": "2025-12-01", "amount": 50.0}]
    r = client.post("/score", json={"customers": [
        {"customer_id": f" {known} "}, {"customer_id": " new1 ", "transactions": hist, "as_of": AS_OF},
        {"customer_id": "123.0", "transactions": hist, "as_of": AS_OF}, {"customer_id": "   "}]}).json()["results"]
    assert [x["customer_id"] for x in r] == [known, "new1", "123", "   "]
    assert "error" not in r[0] and r[1]["n_orders"] == 1 and r[2]["n_orders"] == 1
    assert r[3]["error"] == "customer_id is blank"


@pytest.mark.parametrize("extra", [{"recrod": False}, {"record": "no"}, {"record": 0}])
def test_a_mistyped_record_flag_is_refused_and_records_nothing(client, world, extra):
    from serving.contact_log import ContactLog

    cid = ids_where(world, lambda f: f["lifecycle_stage"] == "at_risk")[-1]
    before = len(ContactLog().history())
    r = client.post("/next_best_action", json={"customers": [{"customer_id": cid}], **extra})
    assert r.status_code == 400 and next(iter(extra)) in r.text and len(ContactLog().history()) == before


def test_a_recording_request_past_its_time_records_nothing_and_answers_503(client, world, monkeypatch):
    """BentoML answers 504 after 60 s but the worker thread runs on: it recorded nudges the client never got, and a
    retry then found its customers in cooldown."""
    import serving.service
    from serving.contact_log import ContactLog

    ids = ids_where(world, lambda f: f["lifecycle_stage"] == "at_risk")[-20:]
    before = len(ContactLog().history())
    monkeypatch.setattr(serving.service, "RECORD_BY_S", -1.0)  # every request is late
    r = client.post("/next_best_action", json={"customers": [{"customer_id": c} for c in ids]})
    assert r.status_code == 503 and len(ContactLog().history()) == before
    assert client.post("/next_best_action", json={"customers": [{"customer_id": ids[0]}], "record": False}
                       ).status_code == 200  # not recording: answered


def test_a_bad_body_is_logged_as_one_line_without_the_body(client, caplog):
    import logging

    logger = logging.getLogger("bentoml._internal.server.http_app")
    logger.addHandler(caplog.handler)
    try:
        secret = [{"timestamp": "2025-12-01", "amount": 5.0, "product_id": "SECRET-SKU"}]
        assert client.post("/score", json={"customers": [{"customer_id": "A", "transactions": secret}],
                                           "history": secret}).status_code == 400
    finally:
        logger.removeHandler(caplog.handler)
    records = [r for r in caplog.records if r.name == logger.name]  # (seen by the root's handler too)
    assert records and all(r.levelno == logging.WARNING and r.exc_info is None for r in records)
    assert "SECRET" not in caplog.text and "1 validation errors" in records[0].getMessage()


def test_two_recording_requests_at_once_nudge_a_customer_once(client, world, monkeypatch):
    import threading
    import time

    from serving.api import Scorer

    ids = ids_where(world, lambda f: f["lifecycle_stage"] == "at_risk")
    cid = next(c for c in ids if client.post("/score", json={"customers": [{"customer_id": c}]})
               .json()["results"][0]["action"] == "nudge")
    real = Scorer.score

    def slow(self, *args, **kwargs):  # widen the window between reading the contact log and writing to it
        out = real(self, *args, **kwargs)
        time.sleep(0.3)
        return out

    monkeypatch.setattr(Scorer, "score", slow)
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(client.post(
        "/next_best_action", json={"customers": [{"customer_id": cid}]}).json()["results"][0]["action"]))
        for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(answers) == ["hold", "nudge"]


def test_api_key_is_required_when_configured(client, monkeypatch):
    body = {"customers": [{"customer_id": "NO-SUCH"}]}
    assert client.post("/score", json=body).status_code == 200  # no key configured
    monkeypatch.setenv("KAIROS_API_KEY", "s3cret")
    assert client.post("/score", json=body).status_code == 401
    assert client.post("/score", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.post("/score", json=body, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.post("/score", json=body, headers={"Authorization": "bearer  s3cret"}).status_code == 200  # RFC 7235
    assert client.post("/score", json=body, headers={"Authorization": "Basic s3cret"}).status_code == 401
    for path in ("/healthz", "/readyz", "/metrics"):
        assert client.get(path).status_code == 200


def test_metrics_count_requests_and_decisions(client):
    client.post("/score", json={"customers": [{"customer_id": "NO-SUCH"}]})
    text = client.get("/metrics").text
    assert "kairos_decisions_total" in text
    assert 'kairos_customers_total{endpoint="score",outcome="unknown",path="snapshot"}' in text
    assert "HELP" in text


def test_docs_are_served(client):
    spec = client.get("/docs.json").json()
    assert "/score" in spec["paths"] and "/next_best_action" in spec["paths"]


# --- batch ---------------------------------------------------------------------------------------------------------

def batch(world, out, **kw):
    from serving.batch import BatchOptions, run_batch

    p = world.paths
    opts = {"transactions": str(p["transactions"]), "events": str(p["events"]), "customers": str(p["customers"]),
            "as_of": AS_OF, "out": str(out), "log_mlflow": False}
    return run_batch(BatchOptions(**{**opts, **kw}))


def test_batch_writes_the_contract_columns_and_is_idempotent(world, tmp_path):
    a = batch(world, tmp_path / "a.parquet", log_mlflow=True)
    batch(world, tmp_path / "b.parquet")
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    df = pd.read_parquet(tmp_path / "a.parquet")
    assert list(df.columns) == SCORE_COLUMNS
    assert len(df) == len(world.features) and df["customer_id"].is_unique
    assert set(df["action"]) <= {"nudge", "hold"} and a["nudges"] == (df["action"] == "nudge").sum()
    assert (df["model_version"] == world.version).all()
    nudged = df.loc[df["action"] == "nudge", "reasons"]
    assert nudged.str.contains("drivers: ").all() and nudged.str.contains("prior").all()


def test_batch_budget_and_date_partitions(world, tmp_path):
    s = batch(world, tmp_path, budget=20.0, partition_by_date=True, record=False)
    out = tmp_path / f"as_of={AS_OF}" / "scores.parquet"
    assert s["out"] == str(out) and out.exists()
    assert s["cost"] <= 20.0 and s["nudges"] > 0


def test_a_batch_without_nudges_exits_cleanly_with_zero_cost(world, tmp_path):
    s = batch(world, tmp_path / "s.parquet", budget=0.0, record=False)  # pandas 3 summed no channels to ''
    assert s["nudges"] == 0 and s["cost"] == 0.0 and s["decisions"] == {"hold.none": len(world.features)}
    assert (pd.read_parquet(tmp_path / "s.parquet")["action"] == "hold").all()


def test_a_failed_mlflow_log_keeps_the_written_scores_and_warns(world, tmp_path, monkeypatch, capsys):
    def store_down(summary, opt):
        raise ConnectionError("tracking server unreachable")

    monkeypatch.setattr("serving.batch._log_run", store_down)
    s = batch(world, tmp_path / "s.parquet", record=False, log_mlflow=True)
    assert Path(s["out"]).exists() and "not logged to MLflow (ConnectionError" in capsys.readouterr().err


@pytest.mark.parametrize("out, kw, match", [
    ("s.parquet", {"features_out": "d"}, "d: is a directory"),  # the scores were written, then a traceback
    ("s.parquet", {"features_out": "s.parquet"}, "the same path as --out"),  # the features silently won
    ("afile", {"partition_by_date": True}, "parent of the output path is a file"),  # NotADirectoryError
    ("s.parquet", {"features_out": "afile/f.parquet"}, "parent of the output path is a file"),
    ("o/s", {"features_out": "o/s/f.parquet"}, "one inside the other"),  # contacts recorded, then a traceback
    ("o/s/f.parquet", {"features_out": "o/s"}, "one inside the other"),
])
def test_batch_checks_both_output_paths_before_any_work(world, tmp_path, out, kw, match):
    (tmp_path / "d").mkdir()
    (tmp_path / "afile").write_text("x")
    kw = {k: str(tmp_path / v) if isinstance(v, str) else v for k, v in kw.items()}
    with pytest.raises(InputError, match=match):  # before the model: this one does not exist
        batch(world, tmp_path / out, model_uri="models:/does-not-exist/1", **kw)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "d"] and not any((tmp_path / "d").iterdir())


def test_serve_on_a_port_in_use_is_a_one_line_error():
    import socket

    from serving.__main__ import main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(InputError, match=f"--port {port}: cannot listen there"):
            main(["serve", "--host", "127.0.0.1", "--port", str(port)])


def test_top_sorts_a_csv_scores_file_by_number_and_checks_its_input(tmp_path, capsys):
    from serving.__main__ import main

    rows = [{"customer_id": c, "as_of": AS_OF, "lifecycle_stage": "repeat", "p_purchase": 0.5, "expected_value": 9.0,
             "action": "nudge", "channel": "email", "message": "m", "priority": p} for c, p in
            (("small", 9.95), ("big", 236.1), ("mid", 10.0))]
    good = tmp_path / "scores.csv"
    pd.DataFrame(rows).to_csv(good, index=False)
    assert main(["top", "--scores", str(good), "--n", "2"]) == 0
    table = capsys.readouterr().out.splitlines()[-2:]
    assert [line.split()[0] for line in table] == ["big", "mid"]  # as text, "9.95" sorted above "236.1"
    not_scores = tmp_path / "tx.csv"
    not_scores.write_text("customer_id,timestamp,amount\nA,2024-01-01,10\n")
    with pytest.raises(InputError, match="missing column.*action"):  # was KeyError: 'action'
        main(["top", "--scores", str(not_scores)])
    with pytest.raises(InputError, match="--n -3: must be at least 1"):
        main(["top", "--scores", str(good), "--n", "-3"])
    pd.DataFrame(rows).assign(priority="high").to_csv(good, index=False)
    with pytest.raises(InputError, match="column priority is not numeric"):
        main(["top", "--scores", str(good)])
    for day, top in (("2025-12-30", "small"), ("2025-12-31", "mid")):  # a --partition-by-date directory: the newest
        (tmp_path / "daily" / f"as_of={day}").mkdir(parents=True)
        pd.DataFrame([r for r in rows if r["customer_id"] == top]).to_parquet(
            tmp_path / "daily" / f"as_of={day}" / "scores.parquet")
    capsys.readouterr()
    assert main(["top", "--scores", str(tmp_path / "daily")]) == 0
    assert capsys.readouterr().out.splitlines()[-1].split()[0] == "mid"


def test_batch_pushes_the_top_aha_action_and_emits_the_moments_that_matter(world, tmp_path):
    rules = tmp_path / "aha_rules.csv"
    pd.DataFrame({"action": ["app_session"], "min_count": [3], "within_days": [30], "lift": [1.7]}).to_csv(rules)
    batch(world, tmp_path / "s.parquet", aha_rules=str(rules), record=False, features_out=str(tmp_path / "f.parquet"))
    df = pd.read_parquet(tmp_path / "s.parquet").set_index("customer_id")
    feats = pd.read_parquet(tmp_path / "f.parquet").set_index("customer_id").loc[df.index]
    new = df.loc[(df["action"] == "nudge") & (df["lifecycle_stage"] == "new")]
    # the Aha action is pushed while it can still be reached: below the count and within its 30 days
    reachable = (feats.loc[new.index, "aha_app_session_first_30d"] < 3) & (feats.loc[new.index, "tenure_days"] <= 30)
    assert reachable.any() and (~reachable).any()
    assert (new.loc[reachable, "message"] == "aha_app_session").all()
    assert (new.loc[~reachable, "message"] == "second_purchase_nudge").all()
    assert new.loc[reachable, "reasons"].str.contains("top Aha action not reached yet").all()
    fired = df["triggers"].dropna().str.split(",").explode()
    assert {"repeat_purchase", "first_communication"} <= set(fired)
    assert df.loc[feats["recency_days"] <= 1, "triggers"].str.contains("purchase").all()
    assert df.loc[feats["tenure_days"] <= 1, "triggers"].str.contains("first_purchase").all()
    assert df.loc[~(feats["days_since_first_seen"] <= 1), "triggers"].fillna("").str.contains("first_comm").sum() == 0


def test_batch_bad_input_fails_before_the_model_and_writes_nothing(tmp_path):
    from serving.__main__ import main

    bad = tmp_path / "t.csv"
    bad.write_text("customer_id,timestamp,amount\nA,2024-01-01,10\nB,2024-01-02,ten\n")
    with pytest.raises(InputError, match="amount.*row 2"):
        main(["batch", "--transactions", str(bad), "--as-of", AS_OF, "--out", str(tmp_path / "o.parquet"),
              "--model-uri", "models:/does-not-exist/1"])
    assert not (tmp_path / "o.parquet").exists()


def test_a_failed_write_leaves_no_file(world, tmp_path, monkeypatch):
    def half_then_fail(self, path, **kw):
        Path(path).write_bytes(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", half_then_fail)
    with pytest.raises(OSError):
        batch(world, tmp_path / "s.parquet", record=False)
    assert list(tmp_path.iterdir()) == []


def test_batch_records_the_nudges_before_its_outputs_appear(world, tmp_path, monkeypatch):
    from serving.contact_log import ContactLog

    monkeypatch.setenv("KAIROS_CONTACT_DB", f"sqlite:///{tmp_path}/contacts.db")
    out, feats = tmp_path / "out" / "s.parquet", tmp_path / "out" / "f.parquet"
    record, seen = ContactLog.record, []

    def look_then_record(self, *args, **kw):
        seen.append(sorted(p.name for p in out.parent.iterdir()))
        return record(self, *args, **kw)

    monkeypatch.setattr(ContactLog, "record", look_then_record)
    s = batch(world, out, features_out=str(feats))
    (names,) = seen  # recorded once, while only the two temporaries existed
    assert [n.split(".")[1] for n in names] == ["f", "s"] and all(n.endswith(".tmp") for n in names)
    nudged = pd.read_parquet(out).query("action == 'nudge'")["customer_id"]
    assert feats.exists() and s["recorded_contacts"] == len(nudged) > 0
    assert sorted(ContactLog().history()["customer_id"]) == sorted(nudged)
    s = batch(world, tmp_path / "t.parquet", record=False)  # --no-record: the output, the log untouched
    assert (tmp_path / "t.parquet").exists() and s["recorded_contacts"] == 0 and len(seen) == 1


@pytest.mark.parametrize("damage", ["refuses new contacts", "corrupt"])
def test_a_failing_contact_log_is_a_one_line_error_and_leaves_no_output(world, tmp_path, monkeypatch, capsys, damage):
    import sqlite3
    from contextlib import closing

    from features.errors import run_cli
    from serving.__main__ import main
    from serving.contact_log import ContactLog

    db = tmp_path / "contacts.db"
    monkeypatch.setenv("KAIROS_CONTACT_DB", f"sqlite:///{db}")
    if damage == "corrupt":
        db.write_bytes(b"not a database " * 100)
    else:  # as a read-only or locked database does, SQLite refuses the insert (the scores were written before it)
        ContactLog().close()
        with closing(sqlite3.connect(db)) as con:
            con.execute("CREATE TRIGGER refuse BEFORE INSERT ON contacts BEGIN SELECT RAISE(ABORT, 'no writes'); END")
            con.commit()
    p, d = world.paths, tmp_path / "out"
    with pytest.raises(SystemExit) as exit_:
        run_cli(main, ["batch", "--transactions", str(p["transactions"]), "--events", str(p["events"]),
                       "--customers", str(p["customers"]), "--as-of", AS_OF, "--out", str(d / "s.parquet"),
                       "--features-out", str(d / "f.parquet")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert err.splitlines()[-1].startswith(f"error: contact database sqlite:///{db}: cannot ")
    assert not d.exists()  # not even the folder made for the outputs


NO_DRIVER = "postgresql+psycopg2://kairos:s3cret@localhost/contacts"  # its driver blocked by `no_driver`


@pytest.fixture
def no_driver(monkeypatch):
    """The contact database drivers psycopg2 and MySQLdb not installed (whether they are here or not)."""
    for module in ("psycopg2", "MySQLdb"):
        monkeypatch.setitem(sys.modules, module, None)


@pytest.mark.parametrize("url, driver", [(NO_DRIVER, "psycopg2"), ("mysql://kairos:s3cret@db.example/x", "MySQLdb")])
def test_a_contact_log_url_whose_driver_is_missing_is_a_one_line_error(no_driver, monkeypatch, url, driver):
    from serving.contact_log import ContactLog

    shown = url.replace("s3cret", "***")
    with pytest.raises(InputError) as given:
        ContactLog(url)
    monkeypatch.setenv("KAIROS_CONTACT_DB", url)
    with pytest.raises(InputError) as from_env:
        ContactLog()
    for exc, source in ((given.value, "the contact log URL"), (from_env.value, "KAIROS_CONTACT_DB")):
        msg = str(exc)
        assert msg.startswith(f"contact database {shown}: cannot load its driver (") and f"in {source} " in msg
        assert driver in msg and "s3cret" not in msg and "\n" not in msg
    with pytest.raises(InputError, match="not a usable SQLAlchemy database URL"):  # was ValueError: int('port')
        ContactLog("postgresql://kairos:s3cret@localhost:port/contacts")


def test_a_sqlite_contact_log_whose_folder_cannot_be_made_is_a_one_line_error(tmp_path):
    from serving.contact_log import ContactLog

    (tmp_path / "afile").write_text("x")
    with pytest.raises(InputError, match="cannot create its folder"):  # was FileExistsError
        ContactLog(f"sqlite:///{tmp_path}/afile/contacts.db")


def test_batch_with_a_contact_db_driver_missing_is_a_one_line_error_and_writes_nothing(world, tmp_path, monkeypatch,
                                                                                       capsys, no_driver):
    from features.errors import run_cli
    from serving.__main__ import main

    monkeypatch.setenv("KAIROS_CONTACT_DB", NO_DRIVER)
    p, d = world.paths, tmp_path / "out"
    with pytest.raises(SystemExit) as exit_:
        run_cli(main, ["batch", "--transactions", str(p["transactions"]), "--as-of", AS_OF,
                       "--out", str(d / "s.parquet"), "--features-out", str(d / "f.parquet")])
    captured = capsys.readouterr()
    assert exit_.value.code == 2 and captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith("error: contact database postgresql+psycopg2://kairos:***@localhost/contacts: cannot "
                           "load its driver (") and "psycopg2" in line and "s3cret" not in line
    assert not d.exists() or not any(d.iterdir())


@pytest.mark.parametrize("damage, match", [("driver", "cannot load its driver"),
                                           ("corrupt", "cannot open it .*; the service was not started")])
def test_serve_with_an_unusable_contact_log_is_a_one_line_error_before_the_model(tmp_path, monkeypatch, capsys,
                                                                                 no_driver, damage, match):
    import socket

    from features.errors import run_cli
    from serving.__main__ import main

    db = tmp_path / "contacts.db"
    db.write_bytes(b"not a database " * 100)
    monkeypatch.setenv("KAIROS_CONTACT_DB", NO_DRIVER if damage == "driver" else f"sqlite:///{db}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def looked_up(uri):  # then the service starts, and its workers fail with a traceback, again and again
        raise AssertionError(f"{uri} was looked up: the contact log was not checked first")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("serving.scoring.resolve_model_uri", looked_up)
    with pytest.raises(SystemExit) as exit_:
        run_cli(main, ["serve", "--port", str(port)])
    (line,) = capsys.readouterr().err.splitlines()
    assert exit_.value.code == 2 and line.startswith("error: contact database ")
    assert re.search(match, line) and "s3cret" not in line


def test_a_failed_rename_after_recording_keeps_the_contacts_and_the_rerun_replaces_them(world, tmp_path, monkeypatch):
    from serving.contact_log import ContactLog

    def refused(src, dst):
        raise PermissionError(f"{dst}: permission denied")

    monkeypatch.setenv("KAIROS_CONTACT_DB", f"sqlite:///{tmp_path}/contacts.db")
    with monkeypatch.context() as m:
        m.setattr(os, "replace", refused)
        with pytest.raises(PermissionError):
            batch(world, tmp_path / "s.parquet")
    kept = ContactLog().history()  # as if sent: these customers are held, not nudged twice
    assert not (tmp_path / "s.parquet").exists() and len(kept) > 0
    assert batch(world, tmp_path / "s.parquet")["recorded_contacts"] == len(ContactLog().history()) == len(kept)


def test_a_killed_write_leaves_no_partial_file(tmp_path):
    code = ("import os, signal, sys\nfrom features.io import atomic_path\n"
            "with atomic_path(sys.argv[1]) as tmp:\n    tmp.write_bytes(b'PAR1 half')\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "s.parquet")], check=False,
                          cwd=Path(__file__).parent.parent)
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "s.parquet").exists()


def test_the_next_write_removes_the_temporary_of_a_killed_one_but_not_of_a_live_one(tmp_path):
    from features.io import atomic_path

    code = ("import os, signal, sys\nfrom features.io import atomic_path\n"
            "with atomic_path(sys.argv[1]) as tmp:\n    tmp.write_bytes(b'PAR1 half')\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "s.parquet")], check=False,
                   cwd=Path(__file__).parent.parent)
    (killed,) = tmp_path.iterdir()
    assert killed.name.startswith(".s.parquet.") and killed.name.endswith(".tmp")
    live = tmp_path / f".s.parquet.{os.uname().nodename}-{os.getppid()}.x.tmp"  # this test's parent is alive
    other = tmp_path / f".t.parquet.{os.uname().nodename}-999999999.x.tmp"  # another target's: not ours to judge
    live.touch()
    other.touch()
    with atomic_path(tmp_path / "s.parquet") as tmp:
        assert tmp.parent == tmp_path and not killed.exists()
        tmp.write_bytes(b"PAR1 whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["s.parquet", live.name, other.name])


def test_serve_hands_its_workers_absolute_store_paths(tmp_path, monkeypatch):
    """BentoML runs the workers in the checkout: a relative KAIROS_CONTACT_DB would be another file than the one the
    batch (run from here) uses, and cooldowns would not hold between them; the same for the MLflow store."""
    from serving.__main__ import _absolute_store

    monkeypatch.chdir(tmp_path)
    db = tmp_path / "rel" / "contacts.db"
    assert _absolute_store("sqlite:///rel/contacts.db") == f"sqlite:///{db}"
    assert _absolute_store("sqlite+pysqlite:///rel/contacts.db") == f"sqlite+pysqlite:///{db}"
    for url in (f"sqlite:///{tmp_path}/c.db", "sqlite:///:memory:", "postgresql://kairos@db/x", "http://mlflow:5000"):
        assert _absolute_store(url) == url
