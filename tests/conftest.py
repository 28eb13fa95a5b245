"""Shared fixtures: small canonical tables built by hand or by a seeded generator (no network, no files)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.schema import validate


def random_history(n_customers: int = 300, seed: int = 0, start: str = "2023-01-01", days: int = 700) -> dict[str, pd.DataFrame]:
    """A seeded random canonical world with orders, returns, categories, margins, channels and events."""
    rng = np.random.default_rng(seed)
    n_lines = n_customers * 12
    cust = rng.integers(0, n_customers, n_lines)
    day = rng.integers(0, days, n_lines)
    order = cust * 10_000 + day
    amount = np.round(rng.gamma(2.0, 15.0, n_lines), 2)
    amount[rng.random(n_lines) < 0.05] *= -1
    tx = pd.DataFrame({
        "customer_id": [f"C{c:05d}" for c in cust],
        "timestamp": pd.Timestamp(start) + pd.to_timedelta(day, "D") + pd.to_timedelta(rng.integers(0, 86_400, n_lines), "s"),
        "amount": amount,
        "order_id": [f"O{o}" for o in order],
        "product_id": [f"P{p}" for p in rng.integers(0, 50, n_lines)],
        "category": rng.choice(["a", "b", "c", "premium"], n_lines),
        "quantity": rng.integers(1, 4, n_lines).astype(float),
        "margin": amount * rng.choice([0.2, 0.5], n_lines),
        "channel": rng.choice(["web", "app", "store"], n_lines),
    })
    n_ev = n_customers * 8
    ev = pd.DataFrame({
        "customer_id": [f"C{c:05d}" for c in rng.integers(0, n_customers + 20, n_ev)],
        "timestamp": pd.Timestamp(start) + pd.to_timedelta(rng.integers(0, days * 86_400, n_ev), "s"),
        "event": rng.choice(["app_session", "review", "referral", "email_open", "newsletter_optin", "chat"], n_ev),
    })
    cu = pd.DataFrame({
        "customer_id": [f"C{c:05d}" for c in range(n_customers + 20)],
        "signup_date": (pd.Timestamp(start) + pd.to_timedelta(rng.integers(0, days, n_customers + 20), "D")).strftime("%Y-%m-%d"),
        "region": rng.choice(["north", "south"], n_customers + 20),
        "age": rng.integers(18, 80, n_customers + 20),
    })
    return {"transactions": validate(tx, "transactions"), "events": validate(ev, "events"),
            "customers": validate(cu, "customers")}


def register_small_champion(world, as_of: pd.Timestamp, experiment: str, n_estimators: int):
    """Fit a small KairosModel on a simulated world directly (no backtest: `training.train.train` adds a minute of
    baselines) and register it as champion in the configured MLflow store; returns model, version, features."""
    import mlflow

    from features.labels import training_frame
    from features.pipeline import build_features
    from training.models import KairosModel
    from training.pyfunc import log_kairos_model
    from training.registry import configure, set_alias

    frame = training_frame(world.transactions, as_of, 90, 365, world.events, world.customers)
    model = KairosModel({"n_estimators": n_estimators, "num_leaves": 15}, value_form="tweedie").fit(frame)
    feats = build_features(world.transactions, as_of, world.events, world.customers)
    configure()
    mlflow.set_experiment(experiment)
    with mlflow.start_run():
        version = str(log_kairos_model(model, feats.loc[feats["n_orders"] > 0]).registered_model_version)
    set_alias("champion", version)
    return model, version, feats


@pytest.fixture(scope="session")
def history() -> dict[str, pd.DataFrame]:
    """A seeded random world of 300 customers over about two years."""
    return random_history()


@pytest.fixture(scope="session", autouse=True)
def compiled_forest_cache(tmp_path_factory):
    """Compiled LightGBM forests go to a temporary cache, not the user's ~/.cache/kairos."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KAIROS_CACHE_DIR", str(tmp_path_factory.mktemp("kairos-cache")))
        yield
