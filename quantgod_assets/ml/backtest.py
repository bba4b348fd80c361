"""Fee-aware backtest of a per-minute signal, in plain numpy.

Timing: the signal of row t is known at the close of minute t, so a trade enters at the price of
row t+1 and exits at the price of row t+1+H. One position at a time by default (signals during a
trade are ignored), like a single account would trade it. Every trade pays `fee` on entry and on
exit (Bybit taker fee 0.055 % by default), as a fraction of the notional.

Prices: `backtest_book` trades at the side of the book a taker gets, a long buys the ask and sells
the bid, a short sells the bid and buys the ask back, with `slippage_bps` beyond the best price on
each side; so every round trip pays the spread. `backtest_signals` trades at one price per row
(e.g. the mid), the bid == ask special case of the same code.

Annualized Sharpe = mean(trade return) / std(trade return) × sqrt(trades per year), trades per
year measured over the span of the data (so waiting in cash counts against the strategy). Below
`min_trades` trades it is NaN ("n/a (k trades)"): a Sharpe of a handful of trades is noise.
The compounded net return comes with a bootstrap interval over the trades (`uncertainty`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..settings import BacktestSettings, EvaluationSettings
from .uncertainty import compounded_return_interval

__all__ = ["DEFAULT_FEE", "BacktestResult", "backtest_book", "backtest_signals", "labels_to_positions"]

DEFAULT_FEE = BacktestSettings().fee  # per side, fraction of notional (training.yaml backtest.fee)
DEFAULT_MIN_TRADES = BacktestSettings().min_trades
MINUTES_PER_YEAR = 365 * 24 * 60
BPS = 1e-4


def labels_to_positions(labels: np.ndarray) -> np.ndarray:
    """Class labels 0 SELL / 1 NEUTRAL / 2 BUY → positions -1 / 0 / +1 (int8)."""
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() > 2):
        raise ValueError("labels must be 0 (SELL), 1 (NEUTRAL) or 2 (BUY)")
    return (labels.astype(np.int8) - 1).astype(np.int8)


_EVALUATION = EvaluationSettings()


@dataclass
class BacktestResult:
    n_trades: int
    n_long: int
    n_short: int
    net_return: float  # compounded, after fees: prod(1 + r) - 1
    sum_return: float  # simple sum of the trades' net returns
    gross_return: float  # compounded, before fees (after the spread and slippage, which are prices)
    mean_trade_return: float
    hit_rate: float  # share of trades with a net return > 0 (nan without trades)
    sharpe: float  # annualized; nan below min_trades trades or without dispersion
    max_drawdown: float  # of the compounded equity curve, as a positive fraction
    fee: float
    hold: int
    min_trades: int  # fewest trades for a Sharpe
    slippage_bps: float  # per side, beyond the traded price
    net_return_low: float  # bootstrap interval of net_return over the trades (nan without trades)
    net_return_high: float
    interval_confidence: float
    entries: np.ndarray  # row of entry (t+1) of each trade
    positions: np.ndarray  # +1 / -1 of each trade
    trade_returns: np.ndarray  # net return of each trade

    @property
    def sharpe_text(self) -> str:
        """`"1.23"`, or `"n/a (4 trades)"` below min_trades (`"n/a"` when the trades do not vary)."""
        if self.n_trades < self.min_trades:
            return f"n/a ({self.n_trades} trade{'' if self.n_trades == 1 else 's'})"
        return "n/a" if np.isnan(self.sharpe) else f"{self.sharpe:.2f}"

    def summary(self) -> dict[str, Any]:
        """Scalars only (for logs, MLflow and asset metadata), with `sharpe_text`."""
        out = asdict(self)
        for key in ("entries", "positions", "trade_returns"):
            out.pop(key)
        out["sharpe_text"] = self.sharpe_text
        return out


def _to_positions(signals: np.ndarray, signal_kind: str) -> np.ndarray:
    if signal_kind == "label":
        return labels_to_positions(signals)
    if signal_kind == "position":
        return np.sign(signals).astype(np.int8)
    raise ValueError(f"signal_kind must be 'label' or 'position', got {signal_kind!r}")


def _trade_prices(
    position: np.ndarray, rows: np.ndarray, buy: np.ndarray, sell: np.ndarray, hold: int
) -> tuple[np.ndarray, np.ndarray]:
    """Entry (row t+1) and exit (row t+1+hold) prices of trades signalled at `rows`: a long buys
    then sells, a short sells then buys back."""
    long = position[rows] > 0
    entry = np.where(long, buy[rows + 1], sell[rows + 1])
    exit_ = np.where(long, sell[rows + 1 + hold], buy[rows + 1 + hold])
    return entry, exit_


def _one_at_a_time(candidates: np.ndarray, span: int) -> np.ndarray:
    taken = []
    free_from = -1  # first signal row allowed: the row the previous trade exits on
    for t in candidates:
        if t >= free_from:
            taken.append(t)
            free_from = int(t) + span
    return np.asarray(taken, dtype=np.int64)


def _select_trades(
    position: np.ndarray,
    buy: np.ndarray,
    sell: np.ndarray,
    hold: int,
    minutes: np.ndarray | None,
    overlap: bool,
) -> np.ndarray:
    """Signal rows that trade: non-neutral, priced at entry and exit, no gap inside the trade
    (with `minutes`), and, unless `overlap`, not while a previous trade is open."""
    span = hold + 1  # rows from the signal to the exit
    candidates = np.flatnonzero(position[: max(position.size - span, 0)] != 0).astype(np.int64)
    if candidates.size:
        entry, exit_ = _trade_prices(position, candidates, buy, sell, hold)
        ok = np.isfinite(entry) & np.isfinite(exit_) & (entry > 0)
        if minutes is not None:
            ok &= (minutes[candidates + span] - minutes[candidates]) == span
        candidates = candidates[ok]
    if not overlap and candidates.size:
        candidates = _one_at_a_time(candidates, span)
    return candidates


def _annualized_sharpe(net: np.ndarray, n_rows: int, minutes: np.ndarray | None) -> float:
    std = float(net.std(ddof=1))
    if minutes is not None and n_rows > 1:
        span_minutes = float(minutes[-1] - minutes[0] + 1)
    else:
        span_minutes = float(n_rows)  # one row per minute
    if std <= 0 or span_minutes <= 0:
        return float("nan")
    trades_per_year = net.size * MINUTES_PER_YEAR / span_minutes
    return float(net.mean() / std * np.sqrt(trades_per_year))


def _backtest(
    position: np.ndarray,
    buy: np.ndarray,
    sell: np.ndarray,
    hold: int,
    fee: float,
    slippage_bps: float,
    minutes: np.ndarray | None,
    overlap: bool,
    min_trades: int,
    interval: dict[str, Any],
) -> BacktestResult:
    """The common core: `buy` / `sell` are the prices a buy / a sell fills at on each row."""
    if hold < 1:
        raise ValueError(f"hold must be at least 1 row, got {hold}")
    if minutes is not None:
        minutes = np.asarray(minutes, dtype=np.int64)
    trades = _select_trades(position, buy, sell, hold, minutes, overlap)
    pos = position[trades].astype(np.float64)
    entry, exit_ = _trade_prices(position, trades, buy, sell, hold)
    gross = pos * (exit_ / entry - 1.0)
    net = gross - 2.0 * fee

    n_trades = int(trades.size)
    low = high = float("nan")
    if n_trades:
        equity = np.cumprod(1.0 + net)
        peak = np.maximum.accumulate(np.concatenate([[1.0], equity]))[1:]
        max_dd = float(np.max(1.0 - equity / peak))
        net_return = float(equity[-1] - 1.0)
        gross_return = float(np.prod(1.0 + gross) - 1.0)
        hit_rate = float(np.mean(net > 0))
        mean_r = float(net.mean())
        bounds = compounded_return_interval(net, **interval)
        low, high = bounds.low, bounds.high
    else:
        max_dd, net_return, gross_return, hit_rate, mean_r = 0.0, 0.0, 0.0, float("nan"), float("nan")

    sharpe = float("nan")
    if n_trades >= max(min_trades, 2):
        sharpe = _annualized_sharpe(net, position.size, minutes)

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
        min_trades=int(min_trades),
        slippage_bps=float(slippage_bps),
        net_return_low=low,
        net_return_high=high,
        interval_confidence=float(interval["confidence"]),
        entries=trades + 1,
        positions=pos.astype(np.int8),
        trade_returns=net,
    )


def _interval_options(block: int, resamples: int, confidence: float, seed: int) -> dict[str, Any]:
    return {"block": block, "resamples": resamples, "confidence": confidence, "seed": seed}


def backtest_signals(
    signals: np.ndarray,
    prices: np.ndarray,
    hold: int,
    fee: float = DEFAULT_FEE,
    signal_kind: str = "label",
    minutes: np.ndarray | None = None,
    overlap: bool = False,
    min_trades: int = 2,
    interval_block: int = 1,
    resamples: int = _EVALUATION.resamples,
    confidence: float = _EVALUATION.confidence,
    seed: int = _EVALUATION.seed,
) -> BacktestResult:
    """Backtest `signals` (per row: class labels 0/1/2 when `signal_kind="label"`, positions
    -1/0/+1 when "position") against `prices` (same rows, e.g. the mid at each minute's close).

    A non-neutral signal at row t opens a trade at prices[t+1], closed at prices[t+1+hold].
    With `minutes` (int minutes since the epoch of each row), a trade is taken only when rows
    t .. t+1+hold are consecutive minutes, so no trade spans a gap. `overlap=True` takes every
    signal (a stack of overlapping positions) instead of one position at a time.
    `min_trades` defaults to 2 here (any Sharpe that can be computed), as before the book
    backtest; pass `BacktestSettings.min_trades` for a report. `interval_block` (in trades),
    `resamples`, `confidence` and `seed` set the bootstrap of the net-return interval
    (`uncertainty.compounded_return_interval`).
    """
    signals = np.asarray(signals)
    prices = np.asarray(prices, dtype=np.float64)
    if signals.shape != prices.shape or signals.ndim != 1:
        raise ValueError(f"signals and prices must be 1-D and aligned: {signals.shape} vs {prices.shape}")
    position = _to_positions(signals, signal_kind)
    interval = _interval_options(interval_block, resamples, confidence, seed)
    return _backtest(position, prices, prices, hold, fee, 0.0, minutes, overlap, min_trades, interval)


def backtest_book(
    signals: np.ndarray,
    bid: np.ndarray,
    ask: np.ndarray,
    hold: int,
    fee: float = DEFAULT_FEE,
    slippage_bps: float = 0.0,
    minutes: np.ndarray | None = None,
    overlap: bool = False,
    min_trades: int = DEFAULT_MIN_TRADES,
    signal_kind: str = "label",
    interval_block: int = 1,
    resamples: int = _EVALUATION.resamples,
    confidence: float = _EVALUATION.confidence,
    seed: int = _EVALUATION.seed,
) -> BacktestResult:
    """Backtest `signals` against the best `bid` and `ask` at each row's close, as a taker.

    A long signalled at row t buys at ask[t+1] and sells at bid[t+1+hold]; a short sells at
    bid[t+1] and buys back at ask[t+1+hold]. `slippage_bps` moves each fill against the trader
    (a buy at ask × (1 + s/1e4), a sell at bid × (1 - s/1e4)); `fee` is paid on each side.
    Timing, gaps (`minutes`), `overlap` and `signal_kind` as in `backtest_signals`; a row without
    a finite positive price on the side a trade needs is not traded. Trades do not overlap (one
    position at a time), so the net-return interval resamples single trades by default
    (`interval_block=1`; `resamples`, `confidence`, `seed`: its bootstrap).
    """
    signals = np.asarray(signals)
    bid = np.asarray(bid, dtype=np.float64)
    ask = np.asarray(ask, dtype=np.float64)
    if signals.ndim != 1 or not signals.shape == bid.shape == ask.shape:
        raise ValueError(
            f"signals, bid and ask must be 1-D and aligned: {signals.shape}, {bid.shape}, {ask.shape}"
        )
    if slippage_bps < 0:
        raise ValueError(f"slippage_bps must be >= 0, got {slippage_bps}")
    position = _to_positions(signals, signal_kind)
    buy = ask * (1.0 + slippage_bps * BPS)
    sell = bid * (1.0 - slippage_bps * BPS)
    interval = _interval_options(interval_block, resamples, confidence, seed)
    return _backtest(position, buy, sell, hold, fee, slippage_bps, minutes, overlap, min_trades, interval)
