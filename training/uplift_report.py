"""The uplift report: Qini curves, uplift by decile, policy values, the next hold-out size, in one HTML page."""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
import pandas as pd

from features.io import atomic_path
from training.uplift_eval import UpliftEvaluation

__all__ = ["learner_table", "policy_table", "write_uplift_report"]

_POLICY_NAMES = {"kairos": "Kairos (uplift x value > cost)", "everyone": "nudge everyone", "no_one": "nudge no one",
                 "random": "nudge at random (Kairos's share)",
                 "by_purchase_probability": "by purchase probability (Kairos's share)"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    _plt().close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _qini_plot(ev: UpliftEvaluation) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, (x, q) in ev.curves.items():
        ax.plot(x, q, label=f"{name} (Qini {ev.metrics[name]['qini']:.3f})", lw=2 if name == ev.chosen else 1)
    x, q = next(iter(ev.curves.values()))
    ax.plot([0, 1], [0, q[-1]], "k--", lw=1, label="random")
    ax.set(xlabel="share of customers targeted (by predicted uplift)", ylabel="incremental outcome (treated units)",
           title="Qini curves (test hold-out)")
    ax.legend(fontsize=8)
    return _png(fig)


def _decile_plot(ev: UpliftEvaluation) -> str:
    plt = _plt()
    d = pd.DataFrame(ev.deciles)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(d["decile"] - 0.2, d["observed"], 0.4, label="observed (treated - control rate)")
    ax.bar(d["decile"] + 0.2, d["predicted"], 0.4, label="predicted")
    ax.axhline(0, color="k", lw=0.8)
    ax.set(xlabel="decile of predicted uplift (1 = highest)", ylabel="uplift", title=f"Uplift by decile ({ev.chosen})")
    ax.legend(fontsize=8)
    return _png(fig)


def _policy_plot(ev: UpliftEvaluation) -> str:
    plt = _plt()
    t = policy_table(ev)
    fig, ax = plt.subplots(figsize=(6, 4))
    y = np.arange(len(t))
    err = np.vstack([t["dr"] - t["dr_lo"], t["dr_hi"] - t["dr"]])
    ax.barh(y, t["dr"], xerr=err, color=["tab:green" if n.startswith("Kairos") else "tab:gray" for n in t.index])
    ax.set_yticks(y, t.index, fontsize=8)
    ax.axvline(0, color="k", lw=0.8)
    ax.set(xlabel="incremental value minus cost per customer (DR, 95% CI)", title="Policy value (test hold-out)")
    return _png(fig)


def learner_table(ev: UpliftEvaluation) -> pd.DataFrame:
    """One row per learner: selection Qini (inner split), test Qini, AUUC, uplift@10/30 with counts."""
    rows = {n: {"selection_qini": ev.selection.get(n, {}).get("qini", np.nan), **m} for n, m in ev.metrics.items()}
    return pd.DataFrame(rows).T


def policy_table(ev: UpliftEvaluation) -> pd.DataFrame:
    """One row per policy: share nudged, IPW and DR value per customer with 95% bootstrap intervals."""
    t = pd.DataFrame(ev.policy_values).T
    t.index = [_POLICY_NAMES.get(n, n) for n in t.index]
    return t[["share", "ipw", "ipw_lo", "ipw_hi", "dr", "dr_lo", "dr_hi"]]


def _table(df: pd.DataFrame) -> str:
    return df.to_html(float_format=lambda v: f"{v:.4f}", border=0, classes="t")


def write_uplift_report(ev: UpliftEvaluation, out_dir: str | Path, context: dict | None = None) -> Path:
    """Write out_dir/uplift_report.html (self-contained: figures inline as PNG); returns its path."""
    out = Path(out_dir) / "uplift_report.html"
    split = pd.DataFrame({"treated": [ev.split["train_treated"], ev.split["test_treated"]],
                          "control (held out)": [ev.split["train_control"], ev.split["test_control"]]},
                         index=["train", "test"])
    split.loc["test responders"] = [ev.split["test_treated_positive"], ev.split["test_control_positive"]]
    p = ev.power
    if p["n_control"] is not None:
        power_text = (f"To detect an uplift of {p['expected_uplift']:.4f} over a hold-out response rate of "
                      f"{p['p_control']:.4f} (two-sided 5% test, 80% power) when {p['budget']:,} customers are "
                      f"nudged, hold out at least <b>{p['n_control']:,}</b> customers at random "
                      f"({p['holdout_share']:.1%} of the campaign). With a 50/50 split {p['equal_arm']:,} per arm suffice.")
    elif p["expected_uplift"] <= 0:
        power_text = "No positive uplift is expected among the customers Kairos would nudge: no power calculation."
    else:
        power_text = (f"With {p['budget']:,} nudges an uplift of {p['expected_uplift']:.4f} over "
                      f"{p['p_control']:.4f} cannot be detected at 80% power whatever the hold-out: nudge at least "
                      f"{p['min_treated'] or 0:,} and hold out as many.")
    ctx = "".join(f"<li>{html.escape(str(k))}: {html.escape(str(v))}</li>" for k, v in (context or {}).items())
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Kairos uplift report</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}} .t td,.t th{{padding:2px 8px;text-align:right}}
img{{max-width:100%}}</style></head><body>
<h1>Kairos uplift report</h1>
<ul>{ctx}<li>chosen learner (best normalised Qini on an inner split of the training part): <b>{ev.chosen}</b></li>
<li>outcome: {html.escape(ev.settings.get('outcome', ''))}; value per purchase (training buyers):
{ev.value_per_purchase:.2f}; treated share (propensity): {ev.settings.get('propensity', float('nan')):.3f}</li></ul>
<h2>Treatment / control split (stratified by treated x outcome)</h2>{_table(split)}
<h2>Learners on the test hold-out</h2>
<p>qini, auuc: normalised (1 = perfect ranking, 0 = random). uplift_at_k: treated minus control response rate in the
top k% by predicted uplift ("overall": top k of all rows, with the treated/control counts inside it;
"by_group": top k of each arm).</p>{_table(learner_table(ev))}
<img src="data:image/png;base64,{_qini_plot(ev)}"><img src="data:image/png;base64,{_decile_plot(ev)}">
<h2>Uplift by decile ({ev.chosen})</h2>{_table(pd.DataFrame(ev.deciles).set_index('decile'))}
<h2>Policy value (off-policy, test hold-out)</h2>
<p>Incremental value in the response window minus contact cost, per customer of the test hold-out, against nudging
no one: inverse propensity weighting (IPW) and doubly robust (DR, T-learner outcome models), 95% bootstrap
intervals.</p>{_table(policy_table(ev))}<img src="data:image/png;base64,{_policy_plot(ev)}">
<h2>Next experiment: hold-out size</h2><p>{power_text}</p>
</body></html>"""
    with atomic_path(out) as tmp:
        tmp.write_text(page)
    return out
