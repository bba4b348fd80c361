"""Backtest arithmetic on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from quantgod_assets.ml.backtest import (
    DEFAULT_FEE,
    MINUTES_PER_YEAR,
    backtest_book,
    backtest_signals,
    labels_to_positions,
)

SELL, NEUTRAL, BUY = 0, 1, 2


def test_labels_map_to_positions():
    np.testing.assert_array_equal(labels_to_positions(np.array([0, 1, 2])), [-1, 0, 1])
    with pytest.raises(ValueError):
        labels_to_positions(np.array([3]))


def test_one_long_trade_enters_next_row_and_pays_two_fees():
    prices = np.array([100.0, 100.0, 101.0, 102.0, 103.0, 104.0])
    signals = np.array([BUY, NEUTRAL, NEUTRAL, NEUTRAL, NEUTRAL, NEUTRAL])
    r = backtest_signals(signals, prices, hold=2)
    # enter at row 1 (100), exit at row 3 (102): +2 % gross, minus 2 × 0.055 %
    assert r.n_trades == 1 and r.n_long == 1 and r.n_short == 0
    assert r.entries.tolist() == [1]
    assert r.trade_returns[0] == pytest.approx(0.02 - 2 * DEFAULT_FEE)
    assert r.net_return == pytest.approx(0.02 - 0.0011)
    assert r.gross_return == pytest.approx(0.02)
    assert r.hit_rate == 1.0
    assert math.isnan(r.sharpe)  # one trade: no dispersion to measure


def test_short_trade_gains_when_price_falls():
    prices = np.array([100.0, 100.0, 99.0, 98.0])
    r = backtest_signals(np.array([SELL, NEUTRAL, NEUTRAL, NEUTRAL]), prices, hold=2, fee=0.0)
    assert r.n_short == 1
    assert r.net_return == pytest.approx(0.02)


def test_fees_turn_a_tiny_gain_into_a_loss():
    prices = np.array([100.0, 100.0, 100.05])
    r = backtest_signals(np.array([BUY, NEUTRAL, NEUTRAL]), prices, hold=1)
    assert r.trade_returns[0] == pytest.approx(0.0005 - 0.0011)
    assert r.hit_rate == 0.0


def test_one_position_at_a_time_unless_overlap():
    prices = np.array([100.0, 100.0, 102.0, 104.0, 104.0, 104.0, 104.0])
    signals = np.array([BUY, BUY, NEUTRAL, BUY, NEUTRAL, NEUTRAL, NEUTRAL])
    single = backtest_signals(signals, prices, hold=2, fee=0.0)
    # t=0 trades rows 1→3; t=1 falls inside it and is skipped; t=3 trades rows 4→6
    assert single.entries.tolist() == [1, 4]
    np.testing.assert_allclose(single.trade_returns, [0.04, 0.0])
    both = backtest_signals(signals, prices, hold=2, fee=0.0, overlap=True)
    assert both.entries.tolist() == [1, 2, 4]
    np.testing.assert_allclose(both.trade_returns, [0.04, 104 / 102 - 1, 0.0])


def test_signals_too_close_to_the_end_are_not_traded():
    prices = np.array([100.0, 101.0, 102.0, 103.0])
    r = backtest_signals(np.array([NEUTRAL, NEUTRAL, BUY, BUY]), prices, hold=1)
    assert r.n_trades == 0 and r.net_return == 0.0 and math.isnan(r.hit_rate)


def test_trades_do_not_span_gaps_in_time():
    prices = np.array([100.0, 100.0, 101.0, 102.0, 103.0])
    minutes = np.array([0, 1, 2, 10, 11])  # a gap between rows 2 and 3
    signals = np.array([BUY, BUY, NEUTRAL, NEUTRAL, NEUTRAL])
    r = backtest_signals(signals, prices, hold=1, minutes=minutes, fee=0.0)
    assert r.entries.tolist() == [1]  # t=0 (rows 0..2) is fine; t=1 would exit across the gap


def test_compounding_hit_rate_drawdown_and_annualized_sharpe():
    prices = np.array([100.0, 100.0, 110.0, 110.0, 99.0, 99.0])
    signals = np.array([BUY, NEUTRAL, BUY, NEUTRAL, NEUTRAL, NEUTRAL])
    r = backtest_signals(signals, prices, hold=1, fee=0.001)
    net = np.array([0.10 - 0.002, 99 / 110 - 1 - 0.002])
    np.testing.assert_allclose(r.trade_returns, net)
    assert r.net_return == pytest.approx((1 + net[0]) * (1 + net[1]) - 1)
    assert r.sum_return == pytest.approx(net.sum())
    assert r.hit_rate == 0.5
    assert r.max_drawdown == pytest.approx(-net[1])
    expected = net.mean() / net.std(ddof=1) * math.sqrt(2 * MINUTES_PER_YEAR / 6)
    assert r.sharpe == pytest.approx(expected)
    summary = r.summary()
    assert "trade_returns" not in summary and summary["n_trades"] == 2


def test_position_signals_and_bad_inputs():
    prices = np.array([100.0, 100.0, 101.0])
    r = backtest_signals(np.array([1, 0, 0]), prices, hold=1, signal_kind="position", fee=0.0)
    assert r.net_return == pytest.approx(0.01)
    with pytest.raises(ValueError):
        backtest_signals(np.array([1, 0]), prices, hold=1)
    with pytest.raises(ValueError):
        backtest_signals(np.array([1, 0, 0]), prices, hold=0)


# --- at the side of the book ---------------------------------------------------------------

TICK = 0.1


def flat_book(n: int, mid: float = 100.0, ticks: int = 2):
    """A constant mid with a constant spread of `ticks` ticks."""
    half = ticks * TICK / 2
    return np.full(n, mid - half), np.full(n, mid + half)


def test_backtest_signals_is_the_book_backtest_with_bid_equal_to_ask():
    rng = np.random.default_rng(0)
    prices = 100 * np.exp(np.cumsum(rng.normal(0, 0.002, 500)))
    signals = rng.integers(0, 3, 500)
    minutes = np.arange(500) + (np.arange(500) >= 250) * 7  # one gap
    on_price = backtest_signals(signals, prices, hold=3, minutes=minutes, min_trades=30)
    on_book = backtest_book(signals, prices, prices, hold=3, minutes=minutes, min_trades=30)
    assert on_price.n_trades > 30
    np.testing.assert_array_equal(on_price.entries, on_book.entries)
    np.testing.assert_allclose(on_price.trade_returns, on_book.trade_returns)
    assert on_price.summary() == on_book.summary()


@pytest.mark.parametrize("signal", [BUY, SELL])
def test_a_round_trip_on_a_flat_mid_loses_the_spread_and_two_fees(signal):
    bid, ask = flat_book(6)
    signals = np.array([signal] + [NEUTRAL] * 5)
    r = backtest_book(signals, bid, ask, hold=2)
    # a long buys the ask and sells the bid, a short sells the bid and buys the ask back
    entry = ask[1] if signal == BUY else bid[1]
    spread = 2 * TICK
    assert r.n_trades == 1 and r.entries.tolist() == [1]
    assert r.gross_return == pytest.approx(-spread / entry)
    assert r.trade_returns[0] == pytest.approx(-spread / entry - 2 * DEFAULT_FEE)


@pytest.mark.parametrize("signal", [BUY, SELL])
def test_slippage_moves_both_fills_against_the_trader(signal):
    bid, ask = flat_book(6)
    signals = np.array([signal] + [NEUTRAL] * 5)
    s = 3 * 1e-4  # 3 bps per side
    plain = backtest_book(signals, bid, ask, hold=2, fee=0.0)
    slipped = backtest_book(signals, bid, ask, hold=2, fee=0.0, slippage_bps=3)
    if signal == BUY:
        expected = bid[3] * (1 - s) / (ask[1] * (1 + s)) - 1
    else:
        expected = 1 - ask[3] * (1 + s) / (bid[1] * (1 - s))
    assert slipped.trade_returns[0] == pytest.approx(expected)
    # about 2 × 3 bps worse than without slippage
    assert plain.trade_returns[0] - slipped.trade_returns[0] == pytest.approx(2 * s, rel=0.01)
    assert slipped.summary()["slippage_bps"] == 3.0


def test_a_signal_right_every_time_nets_the_move_minus_spread_and_fees():
    rng = np.random.default_rng(1)
    steps = rng.choice([-1.0, 1.0], 400) * rng.uniform(0.5, 1.0, 400)  # moves beyond spread and fees
    mid = 100 + np.cumsum(steps)
    bid, ask = mid - TICK, mid + TICK
    hold = 1
    # signal at t: the direction of the move from t+1 (entry) to t+2 (exit), known in hindsight
    move = np.append(mid[2:] - mid[1:-1], [0.0, 0.0])
    signals = np.where(move > 0, BUY, SELL)
    r = backtest_book(signals, bid, ask, hold=hold)
    t = r.entries - 1
    long = r.positions > 0
    expected = np.where(
        long,
        bid[t + 2] / ask[t + 1] - 1,  # buy the ask, sell the bid
        1 - ask[t + 2] / bid[t + 1],  # sell the bid, buy the ask
    ) - 2 * DEFAULT_FEE
    np.testing.assert_allclose(r.trade_returns, expected)
    # in price terms: the absolute move, less the 2-tick spread, over the entry price
    np.testing.assert_allclose(r.trade_returns + 2 * DEFAULT_FEE,
                               (np.abs(move[t]) - 2 * TICK) / np.where(long, ask[t + 1], bid[t + 1]))
    assert r.n_long > 0 and r.n_short > 0
    assert r.hit_rate == 1.0 and r.net_return > 0
    assert r.entries.tolist() == list(range(1, 398, hold + 1))  # one position at a time


def test_no_trade_where_the_book_has_no_price():
    bid, ask = flat_book(8)
    ask[1] = np.nan  # a long signalled at 0 cannot buy at row 1
    signals = np.array([BUY, SELL, NEUTRAL, NEUTRAL, NEUTRAL, NEUTRAL, NEUTRAL, NEUTRAL])
    r = backtest_book(signals, bid, ask, hold=2)
    # the short at row 1 sells the bid of row 2 and buys the ask of row 4: both present
    assert r.entries.tolist() == [2] and r.n_short == 1


def test_sharpe_needs_min_trades():
    rng = np.random.default_rng(2)
    prices = 100 * np.exp(np.cumsum(rng.normal(0, 0.003, 200)))
    signals = np.array([BUY, NEUTRAL] * 100)
    few = backtest_book(signals[:10], prices[:10], prices[:10], hold=1)
    assert few.n_trades == 4
    assert math.isnan(few.sharpe) and few.sharpe_text == "n/a (4 trades)"
    assert few.summary()["sharpe_text"] == "n/a (4 trades)" and few.summary()["min_trades"] == 30
    enough = backtest_book(signals, prices, prices, hold=1)
    assert enough.n_trades == 99 and not math.isnan(enough.sharpe)
    assert enough.sharpe_text == f"{enough.sharpe:.2f}"
    lowered = backtest_book(signals[:10], prices[:10], prices[:10], hold=1, min_trades=4)
    assert not math.isnan(lowered.sharpe)
    # backtest_signals keeps its earlier default: a Sharpe from 2 trades on
    assert not math.isnan(backtest_signals(signals[:10], prices[:10], hold=1).sharpe)


def test_net_return_interval_contains_the_estimate_and_narrows_per_trade_with_more_trades():
    rng = np.random.default_rng(3)
    n = 4001
    prices = 100 * np.exp(np.cumsum(rng.normal(0.0002, 0.003, n)))
    signals = np.full(n, BUY)
    many = backtest_book(signals, prices, prices, hold=1, fee=0.0)
    few = backtest_book(signals[:201], prices[:201], prices[:201], hold=1, fee=0.0)
    assert (many.n_trades, few.n_trades) == (2000, 100)
    for r in (many, few):
        assert r.net_return_low < r.net_return < r.net_return_high
        assert r.interval_confidence == 0.95

    def per_trade_width(r):
        # the compounded total spreads with every trade added; per trade it narrows
        low, high = (1 + r.net_return_low) ** (1 / r.n_trades), (1 + r.net_return_high) ** (1 / r.n_trades)
        return high - low

    assert per_trade_width(few) > 3 * per_trade_width(many)
    seeded = backtest_book(signals[:201], prices[:201], prices[:201], hold=1, fee=0.0, seed=1)
    assert (seeded.net_return_low, seeded.net_return_high) != (few.net_return_low, few.net_return_high)
    blocked = backtest_book(signals[:201], prices[:201], prices[:201], hold=1, fee=0.0, interval_block=20)
    assert np.isnan(blocked.net_return_low) and np.isnan(blocked.net_return_high)  # 100 trades < 10 blocks of 20


def test_no_trades_gives_no_interval_and_a_scalar_summary():
    bid, ask = flat_book(5)
    r = backtest_book(np.full(5, NEUTRAL), bid, ask, hold=1)
    assert r.n_trades == 0 and math.isnan(r.net_return_low) and math.isnan(r.net_return_high)
    assert r.sharpe_text == "n/a (0 trades)"
    summary = r.summary()
    assert not any(isinstance(v, np.ndarray) for v in summary.values())
    assert {"min_trades", "slippage_bps", "net_return_low", "net_return_high", "sharpe_text"} <= set(summary)


def test_book_bad_inputs():
    bid, ask = flat_book(4)
    with pytest.raises(ValueError):
        backtest_book(np.array([BUY, NEUTRAL, NEUTRAL]), bid, ask, hold=1)
    with pytest.raises(ValueError):
        backtest_book(np.full(4, BUY), bid, ask[:3], hold=1)
    with pytest.raises(ValueError):
        backtest_book(np.full(4, BUY), bid, ask, hold=1, slippage_bps=-1)
    with pytest.raises(ValueError):
        backtest_book(np.full(4, BUY), bid, ask, hold=0)
