"""Training at scale: the hash sample of customers (`python -m training train --sample-customers N`)."""
from __future__ import annotations

import pytest

from features.errors import InputError
from training.train import Inputs, sample_customers


def test_hash_sample_keeps_whole_customers_and_grows_monotonically(history):
    inputs = Inputs(history["transactions"], history["events"], history["customers"])
    small, big = sample_customers(inputs, 50), sample_customers(inputs, 120)
    ids = set(small.transactions["customer_id"]) | set(small.events["customer_id"]) | set(small.customers["customer_id"])
    assert len(ids) == 50 and set(small.customers["customer_id"]) <= set(big.customers["customer_id"])
    for name in ("transactions", "events"):
        full, part = getattr(inputs, name), getattr(small, name)
        assert len(part) == full["customer_id"].isin(ids).sum()  # every row of a sampled customer, no other
    assert small.sample == {"sample_customers": 50, "sample_population": 320, "sample_share": round(50 / 320, 6)}
    again = sample_customers(Inputs(history["transactions"].iloc[::-1], history["events"], history["customers"]), 50)
    assert set(again.customers["customer_id"]) == set(small.customers["customer_id"])  # row order does not matter
    assert sample_customers(inputs, None) is inputs and sample_customers(inputs, 10_000).sample["sample_share"] == 1.0
    with pytest.raises(InputError, match="sample-customers"):
        sample_customers(inputs, 0)
