"""Markdown tables of the ML stages' results, for the assets' metadata (Dagster renders them)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .final import FinalModel
    from .search import OptimizationOutcome

__all__ = ["backtest_table", "comparison_table", "trials_table", "walk_forward_table"]


def trials_table(outcome: OptimizationOutcome, limit: int = 50) -> str:
    """The study's last `limit` trials: state, mean metric over the folds, each fold's, params; the best starred."""
    rows = [f"| trial | state | mean {outcome.metric} | folds | params |", "|---:|---|---:|---|---|"]
    for t in outcome.trials[-limit:]:
        value = f"{t['value']:.4f}" if t["value"] is not None else "–"
        folds = ", ".join(f"{v:.3f}" for v in t.get("fold_scores") or [])
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t["params"].items())
        mark = " ⭐" if t["number"] == outcome.best_trial else ""
        rows.append(f"| {t['number']}{mark} | {t['state']} | {value} | {folds} | {params} |")
    return "\n".join(rows)


def comparison_table(final: FinalModel) -> str:
    """Test scores of the model (macro-F1 with its interval) and the baselines (with model − baseline
    and its interval), side by side with their backtests."""
    rows = ["| model | F1 macro | model − this | F1 weighted | F1 SELL | F1 NEUTRAL | F1 BUY "
            "| net return | trades | Sharpe |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    report = final.report
    for name, scores in [("model", final.test), *final.baselines.items()]:
        bt = final.backtests.get(name, {})
        if name == "model":
            f1 = report.interval.format() if report else f"{scores['f1_macro']:.4f}"
            edge = ""
        else:
            f1 = f"{scores['f1_macro']:.4f}"
            edge = report.edges[name].format(signed=True) if report and name in report.edges else ""
        rows.append(
            f"| {'**model**' if name == 'model' else name} | {f1} | {edge} | "
            f"{scores['f1_weighted']:.4f} | {scores['f1_sell']:.3f} | {scores['f1_neutral']:.3f} | "
            f"{scores['f1_buy']:.3f} | {pct(bt.get('net_return'))} | {bt.get('n_trades', 0)} | "
            f"{bt.get('sharpe_text', num(bt.get('sharpe')))} |"
        )
    if report:
        rows += ["", *(f"- {line}" for line in report.verdicts.values()), f"- **Verdict: {report.verdict}**"]
    return "\n".join(rows)


def walk_forward_table(final: FinalModel) -> str:
    """Each walk-forward fold's validation score of the model and the baselines, and their means."""
    wf = final.walk_forward
    if wf is None:
        return ""
    names = list(wf.folds[0].baselines)
    rows = [f"| fold | validation period | windows (train / val) | model {wf.metric} | " + " | ".join(names) + " |",
            "|---:|---|---:|---:|" + "---:|" * len(names)]
    for f in wf.folds:
        rows.append(f"| {f.fold} | {f.val_period[0]} .. {f.val_period[1]} | {f.train_windows:,} / {f.val_windows:,} "
                    f"| {f.model:.4f} | " + " | ".join(f"{f.baselines[n]:.4f}" for n in names) + " |")
    rows.append(f"| **mean** | | | **{wf.model_mean:.4f}** | "
                + " | ".join(f"{wf.baseline_mean(n):.4f}" for n in names) + " |")
    return "\n".join(rows)


def backtest_table(final: FinalModel) -> str:
    """The model's test-period backtest."""
    bt = final.backtests["model"]
    return "\n".join([
        "| | |", "|---|---:|",
        *([f"| instrument | {bt['instrument']} only |"] if bt.get("instrument") else []),
        f"| trades (long / short) | {bt['n_trades']} ({bt['n_long']} / {bt['n_short']}) |",
        f"| net return (compounded, after fees) [interval] | {pct(bt['net_return'])} "
        f"[{pct(bt.get('net_return_low'))}, {pct(bt.get('net_return_high'))}] |",
        f"| gross return | {pct(bt['gross_return'])} |",
        f"| mean trade | {pct(bt['mean_trade_return'], 4)} |",
        f"| hit rate | {pct(bt['hit_rate'])} |",
        f"| annualized Sharpe | {bt.get('sharpe_text', num(bt['sharpe']))} |",
        f"| max drawdown | {pct(bt['max_drawdown'])} |",
        f"| fee per side / hold | {100 * bt['fee']:.3f} % / {bt['hold']} min |",
        "| prices | long at the ask, short at the bid; out at the other side |",
    ])


def pct(value: Any, digits: int = 2) -> str:
    """`12.34 %`, or `–` for a missing or non-finite value."""
    if value is None or not math.isfinite(float(value)):
        return "–"
    return f"{100 * float(value):.{digits}f} %"


def num(value: Any) -> str:
    """`1.23`, or `–` for a missing or non-finite value."""
    if value is None or not math.isfinite(float(value)):
        return "–"
    return f"{float(value):.2f}"
