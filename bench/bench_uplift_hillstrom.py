"""Uplift on the Hillstrom e-mail experiment: Womens vs none and Mens vs none, outcomes visit, conversion, spend.

Usage: python bench/bench_uplift_hillstrom.py [--input ../shared/data/hillstrom] [--seeds 5] [--out bench/UPLIFT_HILLSTROM.md]

For each arm, outcome and seed: a stratified (treated x outcome) 70/30 split, learner selection on an inner split of
the training part, every learner fitted on the training part and measured on the test part (normalised Qini, AUUC,
uplift@10%/30% with the treatment/control counts), and the policy values of the chosen learner. Prints and writes
mean and 95% interval (t over seeds) of each figure. Features come from the customers' attributes (attr_*) through
`build_features`, as of the day before the campaign.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import t as student_t

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from features.adapters import adapt
from features.schema import validate
from training.uplift import feature_spec, nudge_frame
from training.uplift_eval import evaluate


def interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95% t-interval over seeds."""
    v = np.asarray(values, dtype=float)
    half = student_t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else np.nan
    return float(v.mean()), float(v.mean() - half), float(v.mean() + half)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", default=str(ROOT.parent / "shared" / "data" / "hillstrom"))
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "bench" / "UPLIFT_HILLSTROM.md"))
    args = ap.parse_args()
    d = adapt("hillstrom", Path(args.input))
    customers, nudges = validate(d["customers"], "customers"), validate(d["nudges"], "nudges")
    transactions = validate(d["transactions"], "transactions")
    frame = nudge_frame(nudges, transactions, 14, None, customers)
    for col in ("visit", "conversion", "spend"):
        frame[col] = pd.to_numeric(nudges[col]).to_numpy(dtype=float)
    frame["y_value"] = frame["spend"]
    spec = feature_spec(frame.drop(columns=["visit", "conversion", "spend"]))
    rows = []
    for arm in ("womens", "mens"):
        part = frame.loc[nudges["arm"].isin([arm, "none"]).to_numpy()].reset_index(drop=True)
        for outcome in ("visit", "conversion", "spend"):
            for seed in range(args.seeds):
                ev = evaluate(part, spec, outcome=outcome, value="spend", seed=seed, n_boot=200)
                for name, m in ev.metrics.items():
                    rows.append({"arm": arm, "outcome": outcome, "seed": seed, "learner": name,
                                 "chosen": name == ev.chosen, **m,
                                 **{f"policy_{p}_dr": v["dr"] for p, v in ev.policy_values.items()}})
                print(f"{arm} {outcome} seed {seed}: chosen {ev.chosen} "
                      f"uplift@30 {ev.metrics[ev.chosen]['uplift_at_30']:.4f}", file=sys.stderr)
    df = pd.DataFrame(rows)
    lines = [("# Uplift on Hillstrom (stratified 70/30 hold-out, mean and 95% t-interval over "
             f"{args.seeds} seeds)"), "",
             ("| arm | outcome | learner | Qini (norm.) | AUUC (norm.) | uplift@10% | uplift@30% | "
             "uplift@30% by group | top-30% treated/control |"), "|---|---|---|---|---|---|---|---|---|"]
    summary = []
    for (arm, outcome, learner), g in df.groupby(["arm", "outcome", "learner"], sort=False):
        cells = {k: interval(g[k].tolist()) for k in ("qini", "auuc", "uplift_at_10", "uplift_at_30",
                                                        "uplift_at_30_by_group")}
        fmt = {k: f"{m:.4f} [{lo:.4f}, {hi:.4f}]" for k, (m, lo, hi) in cells.items()}
        counts = f"{g['uplift_at_30_n_treated'].mean():.0f}/{g['uplift_at_30_n_control'].mean():.0f}"
        lines.append(f"| {arm} | {outcome} | {learner} | {fmt['qini']} | {fmt['auuc']} | {fmt['uplift_at_10']} | "
                     f"{fmt['uplift_at_30']} | {fmt['uplift_at_30_by_group']} | {counts} |")
        summary.append({"arm": arm, "outcome": outcome, "learner": learner, **{k: v for k, v in cells.items()}})
    chosen = df.loc[df["chosen"]]
    lines += ["", "Chosen learner (by inner-split Qini) per run, and its uplift@30%:", ""]
    for (arm, outcome), g in chosen.groupby(["arm", "outcome"], sort=False):
        m, lo, hi = interval(g["uplift_at_30"].tolist())
        lines.append(f"- {arm} / {outcome}: { {k: int(v) for k, v in g['learner'].value_counts().items()} }; uplift@30% {m:.4f} [{lo:.4f}, {hi:.4f}]")
    lines += ["", ("Policy values (spend in the window per customer of the test part, DR, chosen learner, mean over "
              "seeds; contact cost 0 since Hillstrom has none):"), ""]
    pol = [c for c in chosen.columns if c.startswith("policy_")]
    lines += ["```", chosen.groupby(["arm", "outcome"], sort=False)[pol].mean().round(4).to_string(), "```"]
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)
    print(json.dumps(summary, default=float)[:2000], file=sys.stderr)


if __name__ == "__main__":
    main()
