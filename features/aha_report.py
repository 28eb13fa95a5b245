"""Outputs of the Aha-moment discovery: rules, grid, earn table and a self-contained HTML report with plots.

`run_aha` is what `python -m features aha` calls. Everything is computed in memory first, then the files are written
into a staging directory beside `out_dir` and moved into place one by one (each `os.replace` is atomic), so a failure
leaves no partial contents in `out_dir`. Plots use matplotlib's Agg backend, imported only when the report is drawn.
"""
from __future__ import annotations

import base64
import html
import io
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from features.aha import RULE_COLUMNS, AhaResult, discover
from features.aha_advice import CAVEAT, added_information, earn_table, experiment_plan, significant, top_rule

__all__ = ["analyse", "render_html", "run_aha", "second_purchase_timing", "write_outputs"]

DAY_NS = 86_400 * 10**9


def second_purchase_timing(result: AhaResult) -> dict[str, object]:
    """How soon second purchases come: among buyers observed for `span` days (365 when enough, else the cohort's)."""
    c = result.cohort
    for span in (365, max(max(c.windows) + c.horizon_days, 90)):
        seen = c.buyers_first_ns <= c.as_of.value - span * DAY_NS
        if seen.sum() >= 50:
            break
    gaps = c.buyers_gap_days[seen]
    within = gaps[gaps <= span]
    out: dict[str, object] = {"span_days": span, "buyers": int(seen.sum()), "second_purchases": len(within),
                                  "repeat_share": len(within) / max(len(gaps), 1), "gaps": within}
    for d in (10, 30, 90):
        out[f"of_second_within_{d}d"] = float((within <= d).mean()) if len(within) else float("nan")
        out[f"of_buyers_within_{d}d"] = float((gaps <= d).mean()) if len(gaps) else float("nan")
    return out


def analyse(result: AhaResult) -> dict[str, object]:
    """Add the beyond-correlation columns to the rules and build the experiment, earn table and timing."""
    info = added_information(result)
    rules = result.rules.merge(info, on="action", how="left")
    return {"rules": rules, "earn": earn_table(result, info), "experiment": experiment_plan(result),
                "timing": second_purchase_timing(result), "top": top_rule(result)}


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _heatmaps(result: AhaResult, rules: pd.DataFrame, max_actions: int = 12, max_k: int = 10) -> str:
    """phi by min_count x window per action (ineligible cells blank, the kept threshold boxed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    actions = list(rules["action"][:max_actions])
    cols = 3
    rows_ = max(1, int(np.ceil(len(actions) / cols)))
    fig, axes = plt.subplots(rows_, cols, figsize=(4.2 * cols, 3.2 * rows_), squeeze=False, constrained_layout=True)
    windows = list(result.cohort.windows)
    lim = max(float(np.nanmax(np.abs(result.grid["phi"].where(result.grid["eligible"])))), 0.05) if len(rules) else 1
    for ax, action in zip(axes.flat, actions):
        g = result.grid.loc[(result.grid["action"] == action) & (result.grid["min_count"] <= max_k)]
        mat = np.full((max_k, len(windows)), np.nan)
        ok = g["eligible"].to_numpy()
        cols_ = [windows.index(w) for w in g["within_days"].to_numpy()[ok]]
        mat[g["min_count"].to_numpy()[ok] - 1, cols_] = g["phi"].to_numpy()[ok]
        im = ax.imshow(mat, origin="lower", aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim)
        best = rules.loc[rules["action"] == action].iloc[0]
        if best["min_count"] <= max_k:
            ax.add_patch(plt.Rectangle((windows.index(best["within_days"]) - 0.5, best["min_count"] - 1.5), 1, 1,
                                       fill=False, lw=2, ec="black"))
        ax.set_xticks(range(len(windows)), windows)
        ax.set_yticks(range(0, max_k, 2), range(1, max_k + 1, 2))
        ax.set_title(action, fontsize=10)
        ax.set_xlabel("within days")
        ax.set_ylabel("at least k")
    for ax in list(axes.flat)[len(actions):]:
        ax.axis("off")
    if actions:
        fig.colorbar(im, ax=axes, shrink=0.6, label="phi")
    return _png(fig)


def _comeback(result: AhaResult, rules: pd.DataFrame, n_rules: int = 3) -> str:
    """Cumulative share with a further purchase by days since the first, reached vs not (at risk on day d)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = result.cohort
    shown = rules.loc[significant(rules)].head(n_rules)
    fig, axes = plt.subplots(1, max(len(shown), 1), figsize=(4.5 * max(len(shown), 1), 3.4), squeeze=False,
                             constrained_layout=True)
    t = np.arange(0, max(c.windows) + c.horizon_days + 1)
    for ax, (_, r) in zip(axes.flat, shown.iterrows()):
        d = r["within_days"]
        risk = c.at_risk(d)
        reached = c.counts(r["action"], d) >= r["min_count"]
        groups = ((risk & reached, "reached", "tab:green"), (risk & ~reached, "not reached", "tab:grey"))
        for mask, label, colour in groups:
            gaps = np.sort(c.gap_days[mask])
            ax.plot(t, np.searchsorted(gaps, t, side="right") / max(mask.sum(), 1), label=f"{label} (n={mask.sum():,})",
                    color=colour)
        ax.axvline(d, ls=":", color="black")
        ax.set_title(f"{r['action']} >= {int(r['min_count'])} in {int(d)} d", fontsize=10)
        ax.set_xlabel("days since first purchase")
        ax.set_ylabel("share with a further purchase")
        ax.legend(fontsize=8)
    if shown.empty:
        axes[0, 0].text(0.5, 0.5, "no significant rule", ha="center")
    return _png(fig)


def _timing_plot(timing: dict[str, object]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    gaps = timing["gaps"]
    ax.hist(gaps, bins=np.arange(0, timing["span_days"] + 2, max(1, timing["span_days"] // 60)), color="tab:blue")
    for d in (10, 30, 90):
        ax.axvline(d, ls=":", color="black")
    ax.set_xlabel("days from the first to the second purchase")
    ax.set_ylabel("customers")
    return _png(fig)


def _img(alt: str, png: str) -> str:
    return f"<img alt='{alt}' src='data:image/png;base64,{png}'>"


def _table(df: pd.DataFrame) -> str:
    return df.to_html(index=False, float_format=lambda v: f"{v:.3f}", na_rep="", border=0, classes="t")


def render_html(result: AhaResult, found: dict[str, object]) -> str:
    """The self-contained report (plots embedded as base64 PNG)."""
    rules, earn, exp, timing, top = found["rules"], found["earn"], found["experiment"], found["timing"], found["top"]
    p = result.params
    esc = html.escape
    shares = ", ".join(f"{timing[f'of_second_within_{d}d']:.0%} within {d} days" for d in (10, 30, 90))
    when = esc(str(pd.Timestamp(p["as_of"]).floor("s")))
    head = (f"<p>As of {when}: {result.cohort.n:,} first-time buyers with a fully observed window "
            f"(windows {esc(str(p['windows']))} days, outcome horizon {p['horizon_days']} days, minimum coverage "
            f"{p['min_coverage']:.0%}). Retained = a further purchase within the horizon after the window; customers "
            f"who already bought again inside a window are left out of that window's table.</p>")
    if top is not None:
        head += (f"<p><b>Top rule:</b> at least {int(top['min_count'])} x <code>{esc(top['action'])}</code> within "
                 f"{int(top['within_days'])} days of the first purchase: {top['rate_if']:.1%} come back vs "
                 f"{top['rate_else']:.1%} (lift {top['lift']:.2f}, phi {top['phi']:.3f}, reached by "
                 f"{top['coverage']:.1%}).</p>")
    else:
        head += "<p><b>No rule separates returning customers significantly.</b></p>"
    timing_text = (f"<p>Among {timing['buyers']:,} buyers observed for {timing['span_days']} days, "
                   f"{timing['repeat_share']:.1%} bought again within that time; of those second purchases, {shares} "
                   f"(the '85% within 10 days' rule of thumb, measured for this business).</p>")
    if exp is not None:
        exp_html = (f"<p>Test <code>{esc(exp['action'])}</code> with {esc(exp['nudge'])}. Audience: "
                    f"{esc(exp['audience'])}. Outcome: {esc(exp['outcome'])}. Assuming {exp['assumed_uptake']:.0%} "
                    f"of nudged customers reach the threshold, the come-back rate would rise from "
                    f"{exp['baseline_rate']:.1%} to {exp['expected_rate']:.1%} if the association were causal; "
                    f"detecting that (alpha {exp['alpha']}, power {exp['power']:.0%}) needs a random hold-out of "
                    f"{exp['n_holdout']:,} and {exp['n_treated']:,} nudged customers ({exp['holdout_share']:.0%} "
                    f"held out), about {exp['weeks']:.1f} weeks at {exp['weekly_eligible']:.0f} eligible "
                    f"customers a week.</p>")
    else:
        exp_html = "<p>No significant rule to test.</p>"
    shown = [c for c in RULE_COLUMNS + ["phi", "phi_low", "phi_high", "p_adjusted", "verdict", "phi_if_top",
                                        "phi_if_not_top", "lr_p_value"] if c in rules.columns]
    body = [
        "<h1>Aha moments and key performance actions</h1>", head,
        f"<p class='warn'>All findings are {esc(CAVEAT)}.</p>",
        "<h2>Best threshold per action</h2>", _table(rules[shown]),
        "<h2>phi by count and window</h2>", _img("heat maps", _heatmaps(result, rules)),
        "<h2>Come-back curves</h2>", _img("come-back curves", _comeback(result, rules)),
        "<h2>Time to the second purchase</h2>", timing_text,
        _img("time to second purchase", _timing_plot(timing)),
        "<h2>Experiment for the top rule</h2>", exp_html,
        ("<h2>Earn model (loyalty points)</h2><p>Points in proportion to the difference in come-back rate times the "
        "net value of a retained customer in the horizon; actions that only ride on the top rule's engagement get "
        "none.</p>"), _table(earn.drop(columns=["caveat"], errors="ignore")),
    ]
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}table.t{border-collapse:collapse;"
             "font-size:12px}table.t td,table.t th{padding:2px 6px;border-bottom:1px solid #ddd;text-align:right}"
             ".warn{background:#fff4d6;padding:6px}img{max-width:100%}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Kairos Aha report</title><style>{style}</style>"
            f"</head><body>{''.join(body)}</body></html>")


def write_outputs(result: AhaResult, found: dict[str, object], out_dir: str | Path) -> dict[str, Path]:
    """Write aha_rules.csv, aha_grid.csv, earn_table.csv and aha_report.html into `out_dir` (see module doc)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        from features.errors import InputError

        raise InputError(f"--out {out}: exists and is not a directory")
    files = {"aha_rules.csv": found["rules"], "aha_grid.csv": result.grid, "earn_table.csv": found["earn"],
             "aha_report.html": render_html(result, found)}
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for name, content in files.items():
            if isinstance(content, str):
                (stage / name).write_text(content, encoding="utf-8")
            else:
                content.to_csv(stage / name, index=False)
        out.mkdir(exist_ok=True)
        for name in files:
            os.replace(stage / name, out / name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return {name: out / name for name in files}


def run_aha(transactions: pd.DataFrame, events: pd.DataFrame, as_of: pd.Timestamp, out_dir: str | Path,
            within_days: int | None = None, horizon_days: int = 90, min_coverage: float = 0.02) -> dict[str, object]:
    """Discover, analyse and write everything; returns the analysis (rules with verdicts, earn table, ...)."""
    result = discover(transactions, events, as_of, within_days, horizon_days, min_coverage)
    found = analyse(result)
    write_outputs(result, found, out_dir)
    return found
