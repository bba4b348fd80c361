"""Markdown tables of the ML stages' results, for the assets' metadata (Dagster renders them)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .final import FinalModel
    from .search import OptimizationOutcome

__all__ = ["backtest_table", "comparison_table", "trials_table"]


def trials_table(outcome: OptimizationOutcome, limit: int = 50) -> str:
    """The study's last `limit` trials: state, F1 macro, params; the best one starred."""
    rows = ["| trial | state | F1 macro | params |", "|---:|---|---:|---|"]
    for t in outcome.trials[-limit:]:
        value = f"{t['value']:.4f}" if t["value"] is not None else "–"
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t["params"].items())
        mark = " ⭐" if t["number"] == outcome.best_trial else ""
        rows.append(f"| {t['number']}{mark} | {t['state']} | {value} | {params} |")
    return "\n".join(rows)


def comparison_table(final: FinalModel) -> str:
    """Test scores of the model and the baselines, side by side."""
    rows = ["| model | F1 macro | F1 weighted | F1 SELL | F1 NEUTRAL | F1 BUY "
            "| net return | trades | hit rate | Sharpe |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, scores in [("model", final.test), *final.baselines.items()]:
        bt = final.backtests.get(name, {})
        rows.append(
            f"| {'**model**' if name == 'model' else name} | {scores['f1_macro']:.4f} | "
            f"{scores['f1_weighted']:.4f} | {scores['f1_sell']:.3f} | {scores['f1_neutral']:.3f} | "
            f"{scores['f1_buy']:.3f} | {pct(bt.get('net_return'))} | {bt.get('n_trades', 0)} | "
            f"{pct(bt.get('hit_rate'))} | {num(bt.get('sharpe'))} |"
        )
    return "\n".join(rows)


def backtest_table(final: FinalModel) -> str:
    """The model's test-period backtest."""
    bt = final.backtests["model"]
    return "\n".join([
        "| | |", "|---|---:|",
        f"| trades (long / short) | {bt['n_trades']} ({bt['n_long']} / {bt['n_short']}) |",
        f"| net return (compounded, after fees) | {pct(bt['net_return'])} |",
        f"| gross return | {pct(bt['gross_return'])} |",
        f"| mean trade | {pct(bt['mean_trade_return'], 4)} |",
        f"| hit rate | {pct(bt['hit_rate'])} |",
        f"| annualized Sharpe | {num(bt['sharpe'])} |",
        f"| max drawdown | {pct(bt['max_drawdown'])} |",
        f"| fee per side / hold | {100 * bt['fee']:.3f} % / {bt['hold']} min |",
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
