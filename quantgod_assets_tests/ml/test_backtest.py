"""Backtest arithmetic on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from quantgod_assets.ml.backtest import DEFAULT_FEE, MINUTES_PER_YEAR, backtest_signals, labels_to_positions

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
