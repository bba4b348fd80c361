"""Fee-aware backtest of a per-minute signal, in plain numpy.

Timing: the signal of row t is known at the close of minute t, so a trade enters at the price of
row t+1 and exits at the price of row t+1+H. One position at a time by default (signals during a
trade are ignored), like a single account would trade it. Every trade pays `fee` on entry and on
exit (Bybit taker fee 0.055 % by default), as a fraction of the notional.

Annualized Sharpe = mean(trade return) / std(trade return) × sqrt(trades per year), trades per
year measured over the span of the data (so waiting in cash counts against the strategy).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..settings import BacktestSettings

__all__ = ["DEFAULT_FEE", "BacktestResult", "backtest_signals", "labels_to_positions"]

DEFAULT_FEE = BacktestSettings().fee  # per side, fraction of notional (training.yaml backtest.fee)
MINUTES_PER_YEAR = 365 * 24 * 60


def labels_to_positions(labels: np.ndarray) -> np.ndarray:
    """Class labels 0 SELL / 1 NEUTRAL / 2 BUY → positions -1 / 0 / +1 (int8)."""
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() > 2):
        raise ValueError("labels must be 0 (SELL), 1 (NEUTRAL) or 2 (BUY)")
    return (labels.astype(np.int8) - 1).astype(np.int8)


@dataclass
class BacktestResult:
    n_trades: int
    n_long: int
    n_short: int
    net_return: float  # compounded, after fees: prod(1 + r) - 1
    sum_return: float  # simple sum of the trades' net returns
    gross_return: float  # compounded, before fees
    mean_trade_return: float
    hit_rate: float  # share of trades with a net return > 0 (nan without trades)
    sharpe: float  # annualized; nan with fewer than 2 trades or no dispersion
    max_drawdown: float  # of the compounded equity curve, as a positive fraction
    fee: float
    hold: int
    entries: np.ndarray  # row of entry (t+1) of each trade
    positions: np.ndarray  # +1 / -1 of each trade
    trade_returns: np.ndarray  # net return of each trade

    def summary(self) -> dict[str, Any]:
        """Scalars only (for logs, MLflow and asset metadata)."""
        out = asdict(self)
        for key in ("entries", "positions", "trade_returns"):
            out.pop(key)
        return out


def backtest_signals(
    signals: np.ndarray,
    prices: np.ndarray,
    hold: int,
    fee: float = DEFAULT_FEE,
    signal_kind: str = "label",
    minutes: np.ndarray | None = None,
    overlap: bool = False,
) -> BacktestResult:
    """Backtest `signals` (per row: class labels 0/1/2 when `signal_kind="label"`, positions
    -1/0/+1 when "position") against `prices` (same rows, e.g. the mid at each minute's close).

    A non-neutral signal at row t opens a trade at prices[t+1], closed at prices[t+1+hold].
    With `minutes` (int minutes since the epoch of each row), a trade is taken only when rows
    t .. t+1+hold are consecutive minutes, so no trade spans a gap. `overlap=True` takes every
    signal (a stack of overlapping positions) instead of one position at a time.
    """
    signals = np.asarray(signals)
    prices = np.asarray(prices, dtype=np.float64)
    if signals.shape != prices.shape or signals.ndim != 1:
        raise ValueError(f"signals and prices must be 1-D and aligned: {signals.shape} vs {prices.shape}")
    if hold < 1:
        raise ValueError(f"hold must be at least 1 row, got {hold}")
    if signal_kind == "label":
        position = labels_to_positions(signals)
    elif signal_kind == "position":
        position = np.sign(signals).astype(np.int8)
    else:
        raise ValueError(f"signal_kind must be 'label' or 'position', got {signal_kind!r}")

    n = prices.size
    span = hold + 1  # rows from the signal to the exit
    candidates = np.flatnonzero(position[: max(n - span, 0)] != 0)
    if candidates.size:
        entry_px = prices[candidates + 1]
        exit_px = prices[candidates + span]
        ok = np.isfinite(entry_px) & np.isfinite(exit_px) & (entry_px > 0)
        if minutes is not None:
            minutes = np.asarray(minutes, dtype=np.int64)
            ok &= (minutes[candidates + span] - minutes[candidates]) == span
        candidates = candidates[ok]

    if not overlap and candidates.size:
        taken = []
        free_from = -1  # first signal row allowed: the row the previous trade exits on
        for t in candidates:
            if t >= free_from:
                taken.append(t)
                free_from = int(t) + span
        candidates = np.asarray(taken, dtype=np.int64)

    candidates = candidates.astype(np.int64)
    pos = position[candidates].astype(np.float64)
    entry = prices[candidates + 1] if candidates.size else np.zeros(0)
    exit_ = prices[candidates + span] if candidates.size else np.zeros(0)
    gross = pos * (exit_ / entry - 1.0) if candidates.size else np.zeros(0)
    net = gross - 2.0 * fee

    n_trades = int(candidates.size)
    if n_trades:
        equity = np.cumprod(1.0 + net)
        peak = np.maximum.accumulate(np.concatenate([[1.0], equity]))[1:]
        max_dd = float(np.max(1.0 - equity / peak))
        net_return = float(equity[-1] - 1.0)
        gross_return = float(np.prod(1.0 + gross) - 1.0)
        hit_rate = float(np.mean(net > 0))
        mean_r = float(net.mean())
    else:
        max_dd, net_return, gross_return, hit_rate, mean_r = 0.0, 0.0, 0.0, float("nan"), float("nan")

    sharpe = float("nan")
    if n_trades >= 2:
        std = float(net.std(ddof=1))
        if minutes is not None and n > 1:
            span_minutes = float(np.asarray(minutes)[-1] - np.asarray(minutes)[0] + 1)
        else:
            span_minutes = float(n)  # one row per minute
        if std > 0 and span_minutes > 0:
            trades_per_year = n_trades * MINUTES_PER_YEAR / span_minutes
            sharpe = float(net.mean() / std * np.sqrt(trades_per_year))

    return BacktestResult(
        n_trades=n_trades,
        n_long=int((pos > 0).sum()),
        n_short=int((pos < 0).sum()),
        net_return=net_return,
        sum_return=float(net.sum()),
        gross_return=gross_return,
        mean_trade_return=mean_r,
        hit_rate=hit_rate,
        sharpe=sharpe,
        max_drawdown=max_dd,
        fee=float(fee),
        hold=int(hold),
        entries=candidates + 1,
        positions=pos.astype(np.int8),
        trade_returns=net,
    )
