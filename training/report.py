"""The backtest report: plots (reliability, gain, importance, SHAP summary), the decile table and one HTML page."""
from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np
import pandas as pd

from training.backtest import SCORERS, Backtest
from training.metrics import decile_table, lift_curve, reliability_curve

__all__ = ["metrics_table", "write_report"]

_HEADLINE = ("auc", "pr_auc", "brier", "log_loss", "ece", "top_decile_lift", "gini", "spearman", "mae",
             "decile_mape", "pred_actual_ratio", "value_top_decile_lift")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


def metrics_table(metrics: dict[str, float], prefix: str = "") -> pd.DataFrame:
    """Metric x scorer table of backtest metrics (`prefix` "new." for the new-customer population)."""
    rows = {m: {s: metrics.get(f"{prefix}{s}.{m}", np.nan) for s in SCORERS} for m in _HEADLINE}
    table = pd.DataFrame(rows).T
    return table.dropna(how="all")


def _reliability(bt: Backtest, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5))
    s = bt.scored
    for name, col in (("kairos", "p_purchase"), ("bgnbd", "bgnbd_p"), ("paretonbd", "paretonbd_p")):
        if col in s:
            curve = reliability_curve(s["y_purchase"], s[col])
            ax.plot(curve["mean_predicted"], curve["fraction_positive"], marker="o", label=name)
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect")
    ax.set(xlabel="predicted probability", ylabel="observed share who bought", title="Reliability (backtest)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _gain(bt: Backtest, path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    s = bt.scored
    for ax, target, cols, title in (
        (axes[0], "y_purchase", {"kairos": "p_purchase", "bgnbd": "bgnbd_p", "paretonbd": "paretonbd_p", "rfm": "rfm_p"},
         "Gain: who buys"),
        (axes[1], "y_value", {"kairos": "expected_value", "bgnbd": "bgnbd_value", "paretonbd": "paretonbd_value",
                              "rfm": "rfm_value"}, "Gain: value"),
    ):
        for name, col in cols.items():
            if col in s:
                curve = lift_curve(s[target], s[col])
                ax.plot(curve.iloc[:, 0], curve.iloc[:, 1], label=name)
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="random")
        ax.set(xlabel="share of customers, best first", ylabel=f"share of {target}", title=title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _importance_and_shap(bt: Backtest, importance_path: Path, shap_path: Path) -> pd.DataFrame:
    plt = _plt()
    booster = bt.model.booster()
    imp = pd.Series(booster.feature_importance("gain"), index=booster.feature_name()).sort_values(ascending=False)
    top = imp.head(20)[::-1]
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.barh(top.index, top.to_numpy())
    ax.set(xlabel="total gain", title="Feature importance (next-purchase model)")
    fig.tight_layout()
    fig.savefig(importance_path, dpi=110)
    plt.close(fig)
    sample = bt.scored.sample(min(2000, len(bt.scored)), random_state=0)
    contrib = bt.model.contributions(sample)
    order = contrib.abs().mean().sort_values(ascending=False).index[:15][::-1]
    fig, ax = plt.subplots(figsize=(8, 6))
    for i, col in enumerate(order):
        values = pd.to_numeric(sample[col], errors="coerce") if col in sample else pd.Series(np.nan, index=sample.index)
        color = values.rank(pct=True).fillna(0.5).to_numpy()
        jitter = np.random.default_rng(i).uniform(-0.3, 0.3, len(sample))
        ax.scatter(contrib[col], i + jitter, c=color, cmap="coolwarm", s=4, alpha=0.6)
    ax.set_yticks(range(len(order)), order)
    ax.axvline(0, color="k", lw=0.8)
    ax.set(xlabel="SHAP value (log-odds of a purchase); colour: feature value, blue low, red high",
           title="SHAP summary (next-purchase model)")
    fig.tight_layout()
    fig.savefig(shap_path, dpi=110)
    plt.close(fig)
    return imp.rename("gain").to_frame()


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def write_report(bt: Backtest, out_dir: Path, title: str = "Kairos backtest") -> list[Path]:
    """Write plots, the decile table, the importances and `backtest_report.html` into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {k: out_dir / f"{k}.png" for k in ("reliability", "gain_lift", "feature_importance", "shap_summary")}
    _reliability(bt, paths["reliability"])
    _gain(bt, paths["gain_lift"])
    importance = _importance_and_shap(bt, paths["feature_importance"], paths["shap_summary"])
    deciles = decile_table(bt.scored["y_value"], bt.scored["expected_value"])
    files = [out_dir / "decile_table.csv", out_dir / "feature_importance.csv", out_dir / "backtest_report.html"]
    deciles.to_csv(files[0], index=False)
    importance.to_csv(files[1])
    m = bt.metrics
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:auto}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}} img{{max-width:100%}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Backtest cutoff {bt.cutoff}: models trained on rolling cutoffs whose label windows end by it, scored on
{int(m['n_customers']):,} customers who had bought by then ({int(m['n_new_customers']):,} with exactly one order).
Value model form: <b>{bt.model.value_form_}</b> (out-of-time Gini {bt.model.value_forms_gini_}).
BTYD probabilities are the models' exact P(at least one purchase in the horizon).</p>
<h2>All customers</h2>{metrics_table(m).to_html(float_format=lambda v: f"{v:.4f}")}
<h2>New customers (one order): second purchase</h2>{metrics_table(m, "new.").to_html(float_format=lambda v: f"{v:.4f}")}
<h2>Calibration and gain</h2>{_img(paths['reliability'])}{_img(paths['gain_lift'])}
<h2>Value deciles (Kairos)</h2>{deciles.to_html(index=False, float_format=lambda v: f"{v:,.2f}")}
<h2>Drivers</h2>{_img(paths['feature_importance'])}{_img(paths['shap_summary'])}
</body></html>"""
    files[2].write_text(page)
    return [*paths.values(), *files]
