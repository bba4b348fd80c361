"""A synthetic market shaped like Bybit's historical order-book archives.

`generate_day` / `generate_days` write `{out}/{YYYY}/{YYYY-MM-DD}_{SYMBOL}_ob{depth}.data.zip`
(linear; spot and inverse under `{out}/{category}/{SYMBOL}/{YYYY}/`, where the platform looks), a
ZIP with one deflated member of CRLF JSON lines exactly like the real files (see
`docs/bybit-format.md`): an opening snapshot a fraction of a second after midnight, a delta every
`rate_ms`, and at the very end the next day's opening snapshot (same `u` as the last delta).

Instruments (`instrument`, `PROFILES`): the symbol's base asset sets the price scale, the tick and
the size scale (BTC ~84,000 tick 0.10, ETH ~2,000 tick 0.01, SOL ~150 tick 0.01, any other base a
scale from its name with a tick 1e-5 to 1e-4 of it); the category how the numbers are written
(linear and inverse fixed decimals `"2001.50"`, spot without trailing zeros `"2001.5"`) and the
default depth (spot 200, inverse 500). BTCUSDT linear writes the same bytes as before instruments
existed; other bases draw their own random streams.

The market:
  * a price path (numpy, `_PathModel`): GBM with a per-minute volatility of about 0.075-0.085 %
    (slowly varying), occasional jumps spread over tens of seconds, and a latent drift regime
    (-1.0, -0.5, 0, +0.5 or +1.2 % an hour) that lasts 1-3 hours and leans against long moves;
  * the book (numba, `_fill`): the instrument's tick (BTC 0.10), spread usually one tick, level sizes log-normal and
    larger near the top; the drift regime skews the sizes (bids larger when the drift is up), so
    the top-level imbalance leads the next hour's return: a learnable signal;
  * `flip=True` (generate_days): the book leans against the drift instead (the signal's sign
    flipped, the same random draws): what a model trained on ordinary days meets when its
    market changes (the live-monitoring test);
  * the signal strength (`signal`, default 1.0, >= 0): scales the regime drifts and, with them,
    the size skew (skew = signal * SKEW_GAIN * regime drift / DRIFT_SCALE + noise).
    `signal=0` is NULL data with no directional information anywhere: the regimes are switched
    off too (drift 0 everywhere: a driftless price with the same volatility, jumps and noise),
    because regimes that last hours would make past returns predict future ones (momentum) even
    with no information in the book; the size skew is then its slow noise alone. `signal=0.5`
    halves every regime drift (-0.5 ... +0.6 % an hour) and the skew they cause: the book reads
    the weaker drift at the same gain, which is smaller next to the unchanged noise. The random
    numbers drawn do not depend on `signal` (they are drawn, then scaled), so days of one seed
    share their noise, volatility and jumps at every strength; the default 1.0 writes the same
    bytes as before the setting existed;
  * the exchange window: after every message each side holds exactly `depth` levels; levels
    that leave the window arrive as `"0"` deletes, new deep levels as inserts.

Speed: the dynamics are numpy, the bytes are written by numba into a reused buffer that is
streamed into the ZIP member while the next buffer is being filled (compression and generation
overlap on two threads). A full 100 ms day is ~860,000 lines, ~830 MB unzipped at depth 200.

Faults (`FAULTS`, each at most once a day, at fixed fractions of the day, see `fault_times`):
restart (mid-day snapshot with u=1), gap (u jumps by 6), silence (no message for 5 minutes),
crossed (one delta inserts a bid above the best ask; the next delta removes it), malformed (a
truncated copy of one line follows it), truncated (the ZIP is cut to 70 % of its bytes).

The faults above leave a correct replay and many wrong ones with the same samples. These four
tell them apart (each compared with the reference replay in the tests); their times are whole
seconds, `T = fault_times(...)[name][0]` ms after midnight, and "sample k" is the book after
every message with ts < day_start + (k+1)*1000 ms (taken at that time):
  * early_deltas: the file opens with the deltas before T (2.5 s, at least one), and the day's
    first snapshot comes only then (ts = day_start + T, the `u` of the delta before it). A replay
    must skip and count them (`deltas_before_snapshot`), never apply them: the samples before it
    hold no book.
  * boundary: one delta lands exactly on a second boundary, ts = day_start + T, and no other
    message follows in the next second (the deltas there are dropped). With k = T/1000 - 1, the
    sample k (taken at that very ms) is the book before it and sample k+1 the book after it.
  * narrow_restart: a restart snapshot (u=1) with only the top `depth // 4` levels a side, each
    with a size other than the book's, as the last message before T: the sample at T is exactly
    that narrow book (the deeper levels the replay held must be gone); the next delta refills
    the window to `depth` levels.
  * one_sided_cross: a delta touching only the bids, as the last message before T: a bid
    CROSS_TICKS ticks above the best ask (the deepest bid leaves). A replay counts it crossed and
    removes the asks at or below that bid (`crossed_levels_removed`, the engine's rule for a
    one-sided crossing); the generator's book does the same, so the sample at T is that repaired,
    uncrossed book (its best bid the crossing bid). The next delta moves both sides back to the
    price path.

This module does not import dagster.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import zipfile
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numba import njit

from ..archive import CATEGORIES, check_category, check_symbol, download_folder

__all__ = [
    "CATEGORIES",
    "CATEGORY_DEPTH",
    "FAULTS",
    "PROFILES",
    "Instrument",
    "archive_name",
    "archive_path",
    "fault_times",
    "generate_day",
    "generate_days",
    "instrument",
    "price_path",
]

FAULTS = (
    "restart", "gap", "silence", "crossed", "malformed", "truncated",
    "early_deltas", "boundary", "narrow_restart", "one_sided_cross",
)

DAY_MS = 86_400_000
# The book's sizes live in a ring of RING ticks a side, indexed by tick & MASK: it must hold the
# book's span (at most depth / P_DEEP ~ 1,600 ticks at depth 500) plus one message's move
# (refused above RING // 4), never the day's range. Every level that leaves the window is zeroed,
# so the price may wander any number of ticks. 131,072 ticks is 13,107 USD at BTC's 0.10 and
# 1,311 USD at ETH's 0.01, against a book 16 USD deep there: room for any instrument here.
RING_BITS = 17
RING = 1 << RING_BITS
MASK = RING - 1
BUFFER_BYTES = 32 << 20
TRUNCATE_KEEP = 0.7

# message kinds handed to the kernel
K_DELTA, K_SNAPSHOT, K_RESTART, K_GAP, K_CROSSED, K_MALFORMED = 0, 1, 2, 3, 4, 5
K_NARROW, K_ONE_SIDED = 6, 7
GAP_SKIP = 5  # u jumps by 1 + GAP_SKIP at a gap
EARLY_MS = 2_500  # early_deltas: the first snapshot comes this late, after the deltas before it
NARROW_SHARE = 4  # narrow_restart: the snapshot keeps depth // NARROW_SHARE levels a side
CROSS_TICKS = 2  # one_sided_cross: the bid this many ticks above the best ask

# --- the price path -----------------------------------------------------------------------
REGIME_DRIFT = np.array([-0.010, -0.005, 0.0, 0.005, 0.012])  # log-return per hour
REGIME_PROB = np.array([0.12, 0.20, 0.38, 0.20, 0.10])  # mean drift 0
REGIME_HOURS = (1.0, 3.0)  # a regime lasts uniformly 1-3 h
VOL_MIN_RANGE = (0.00065, 0.00085)  # per-minute volatility of a day
VOL_BLOCK_MS = 300_000  # the volatility multiplier changes every 5 minutes
VOL_TAU_MIN = 60.0
VOL_SPREAD = 0.25  # std of the log multiplier
JUMPS_PER_DAY = 1.5
JUMP_SIZE = 0.0035
JUMP_SECONDS = (10.0, 60.0)
MOVE_PROB = 0.3  # share of 100 ms steps in which the price moves (the rest are size-only updates)
EXTRA_SPREAD_PROB = 0.04
SKEW_GAIN = 0.75  # size log-skew at a drift of DRIFT_SCALE
DRIFT_SCALE = 0.01
SKEW_NOISE = 0.12
SKEW_NOISE_TAU_MIN = 15.0
REVERT_SCALE = 0.03  # a 3 % distance from the anchor tilts the next regime fully
REVERT_GAIN = 1.5
ANCHOR_TAU_MS = 12 * 3_600_000.0

# --- the book ------------------------------------------------------------------------------
P_TOP, P_DEEP, P_DECAY = 0.95, 0.32, 12.0  # chance a tick d from the best holds a level
SIZE_TOP, SIZE_DEEP, SIZE_DECAY, SIZE_SIGMA = 0.35, 0.06, 8.0, 0.9  # BTC, log-normal
SIZE_MAX = 9_999_999  # thousandths
RANDOM_UPDATES = 9.5  # Poisson mean of size updates a side a message
RANDOM_MAX = 64
NEAR_SHARE, NEAR_MEAN, FAR_MEAN = 0.6, 4.0, 60.0  # distance (ticks) of a size update
DELETE_PROB = 0.25
REFRESH_PROB = 0.5  # an update draws a fresh size (else it scales the old one)


# --- instruments ---------------------------------------------------------------------------
CATEGORY_DEPTH = {"linear": 200, "spot": 200, "inverse": 500}  # Bybit's spot archive is ob200, inverse ob500
QUOTES = ("USDT", "USDC", "USD", "PERP")  # stripped from a symbol's end to find its base asset
REFERENCE_PRICE = 84_000.0  # the book model's sizes are BTC's; cheaper bases hold ~this / price more
MIN_START_TICKS = 5_000  # a start price holds at least this many ticks (the book reaches ~1,600 down)
GENERIC_LOG10_PRICE = (-2.0, 4.0)  # an unlisted base's price scale: 0.01-10,000, from its name
GENERIC_START_SPREAD = (0.7, 1.3)  # its start price: this share of the scale
# base -> (start price range, tick decimals, linear decimals written, size exponent, size decimals)
PROFILES: dict[str, tuple[tuple[float, float], int, int, int, int]] = {
    "BTC": ((60_000.0, 110_000.0), 1, 2, 0, 3),  # tick 0.10 written "84123.40"; sizes "0.125"
    "ETH": ((1_400.0, 2_600.0), 2, 2, 2, 2),  # tick 0.01 "2001.53"; sizes 100x BTC's, "35.12"
    "SOL": ((100.0, 200.0), 2, 3, 3, 1),  # tick 0.01 "150.120"; sizes 1000x BTC's, "350.5"
}


@dataclass(frozen=True)
class Instrument:
    """One market's scale and how its numbers are written.

    A price is a whole number of ticks (tick = 10**-tick_decimals) written with `price_decimals`
    decimals on linear and inverse files (`"2001.50"`), without trailing zeros on spot files
    (`"2001.5"`, `"76344"`), as Bybit's archives do. Sizes are the book model's (BTC-sized) times
    10**size_exp, in lots of 10**-size_decimals, trimmed the same way on spot files.
    """

    symbol: str
    category: str
    base: str
    start_range: tuple[float, float]
    tick_decimals: int
    price_decimals: int
    size_exp: int
    size_decimals: int

    @property
    def ticks_per_unit(self) -> int:
        return 10**self.tick_decimals

    @property
    def tick(self) -> float:
        return 1.0 / self.ticks_per_unit

    @property
    def trim(self) -> bool:
        return self.category == "spot"

    @property
    def lots(self) -> int:
        """Lots in one unit of the book model's size (BTCUSDT: 1000, sizes in thousandths)."""
        return 10 ** (self.size_exp + self.size_decimals)

    @property
    def size_max(self) -> int:
        return 10_000 * self.lots - 1  # BTCUSDT: 9,999,999 thousandths

    def spec(self) -> np.ndarray:
        """The numbers the numba writer needs (the SP_* slots)."""
        out = np.zeros(SP_SIZE, dtype=np.int64)
        out[SP_PX_MULT] = 10 ** (self.price_decimals - self.tick_decimals)
        out[SP_PX_UNIT] = 10**self.price_decimals
        out[SP_PX_DECIMALS] = self.price_decimals
        out[SP_SZ_UNIT] = 10**self.size_decimals
        out[SP_SZ_DECIMALS] = self.size_decimals
        out[SP_TRIM] = int(self.trim)
        out[SP_LOTS] = self.lots
        out[SP_SIZE_MAX] = self.size_max
        # "," '["' price '","' size '"]': the price with room for a 100-fold rise
        price_chars = len(str(int(self.start_range[1] * 100))) + 1 + self.price_decimals
        out[SP_LEVEL_BYTES] = max(32, 8 + price_chars + len(str(self.size_max)) + 1)
        return out


def _base_of(symbol: str) -> str:
    upper = symbol.upper()
    for quote in QUOTES:
        if upper.endswith(quote) and len(upper) > len(quote):
            return upper[: -len(quote)]
    return upper


def instrument(symbol: str = "BTCUSDT", category: str = "linear", start_price: float | None = None) -> Instrument:
    """The instrument generated for `symbol` in `category`.

    The base asset (the symbol less USDT / USDC / USD / PERP) picks a profile in PROFILES
    (BTC ~84,000 tick 0.10, ETH ~2,000 tick 0.01, SOL ~150 tick 0.01); any other base gets a
    price scale of 0.01-10,000 from its name (CRC-32, so the same on every machine), or
    `start_price` when given, and a tick that is a power of ten 1e-5 to 1e-4 of that scale, with
    sizes scaled up by about REFERENCE_PRICE / price. The category only changes how the numbers
    are written (spot: no trailing zeros) and where the file goes.
    """
    check_category(category)
    if not symbol or not (symbol.isascii() and symbol.isalnum()):
        raise ValueError(f"symbol must be ASCII letters and digits, got {symbol!r}")
    if category != "linear":
        check_symbol(symbol)  # it becomes a folder name
    base = _base_of(symbol)
    if base in PROFILES:
        start_range, tick_decimals, price_decimals, size_exp, size_decimals = PROFILES[base]
    else:
        if start_price is not None:
            scale = float(start_price)
            if not (math.isfinite(scale) and scale > 0):
                raise ValueError(f"start_price must be a number > 0, got {start_price}")
        else:
            lo, hi = GENERIC_LOG10_PRICE
            share = zlib.crc32(base.encode("ascii")) / 2**32
            scale = float(f"{10 ** (lo + (hi - lo) * share):.3g}")
        tick_decimals = 4 - math.floor(math.log10(scale))  # scale in [10^k, 10^(k+1)): tick 10^(k-4)
        price_decimals = max(0, tick_decimals)
        size_exp = max(0, round(math.log10(REFERENCE_PRICE / scale)))
        size_decimals = max(0, 3 - size_exp)
        start_range = (scale * GENERIC_START_SPREAD[0], scale * GENERIC_START_SPREAD[1])
        if tick_decimals < 0:
            raise ValueError(f"start_price {start_price} is too large for a tick of at most 1")
    return Instrument(symbol=symbol, category=category, base=base, start_range=start_range,
                      tick_decimals=tick_decimals, price_decimals=price_decimals, size_exp=size_exp,
                      size_decimals=size_decimals)


def archive_name(day: dt.date, symbol: str = "BTCUSDT", depth: int = 200) -> str:
    return f"{day.isoformat()}_{symbol}_ob{depth}.data.zip"


def archive_path(out_dir: Path, day: dt.date, symbol: str = "BTCUSDT", depth: int = 200,
                 category: str = "linear") -> Path:
    """Where the platform looks for the day (`archive.download_folder`): linear
    `{out}/{YYYY}/{name}`, spot and inverse `{out}/{category}/{SYMBOL}/{YYYY}/{name}`."""
    return download_folder(Path(out_dir), day, symbol, category) / archive_name(day, symbol, depth)


def fault_times(duration_s: int | None = None) -> dict[str, tuple[int, int]]:
    """Where each fault goes: name -> (ms after midnight, length in ms). `truncated` has no time.

    early_deltas, boundary, narrow_restart and one_sided_cross are at whole seconds (see the
    module docstring for what lands exactly there).
    """
    limit = DAY_MS if duration_s is None else int(duration_s) * 1000

    def second(share: float) -> int:
        return max(1000, int(limit * share) // 1000 * 1000)

    return {
        "early_deltas": (min(EARLY_MS, limit // 2), 0),
        "boundary": (second(0.20), 0),
        "crossed": (int(limit * 0.30), 0),
        "gap": (int(limit * 0.40), 0),
        "malformed": (int(limit * 0.50), 0),
        "silence": (int(limit * 0.55), min(300_000, limit // 10)),
        "one_sided_cross": (second(0.70), 0),
        "restart": (int(limit * 0.75), 0),
        "narrow_restart": (second(0.85), 0),
    }


def _day_start_ms(day: dt.date) -> int:
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()) * 1000


# =============================================================================================
# price path (numpy)
# =============================================================================================


def _check_signal(signal: float) -> float:
    if not (math.isfinite(signal) and signal >= 0.0):
        raise ValueError(f"signal must be a finite number >= 0, got {signal}")
    return float(signal)


class _PathModel:
    """The latent market: log price, drift regime, volatility and size skew, carried across days.

    `signal` scales the regime drifts (see the module docstring); the regimes are still drawn at
    any strength so that the random streams, hence noise, volatility and jumps, stay the same.
    """

    def __init__(self, rng: np.random.Generator, start_price: float, signal: float = 1.0, flip: bool = False):
        self.rng = rng
        self.signal = _check_signal(signal)
        # the book's lean: +1 sizes follow the drift (the planted signal), -1 they lean against it
        # (the same market whose signal flipped sign: a model trained on +1 days fails on -1 days)
        self.lean = -1.0 if flip else 1.0
        self.log_price = math.log(start_price)
        self.regime = int(rng.choice(len(REGIME_DRIFT), p=REGIME_PROB))
        self.regime_left_ms = float(rng.uniform(*REGIME_HOURS) * 3_600_000 * rng.random())
        self.vol_x = float(rng.normal(0.0, VOL_SPREAD))
        self.noise_x = float(rng.normal(0.0, SKEW_NOISE))
        self.sigma_min = float(rng.uniform(*VOL_MIN_RANGE))
        self.anchor = self.log_price

    def new_day(self) -> None:
        self.sigma_min = float(self.rng.uniform(*VOL_MIN_RANGE))

    def drift_now(self) -> float:
        """The current regime's drift (log-return per hour), scaled by the signal strength."""
        # signal * x == x exactly at the default 1.0: the default's bytes do not change
        return self.signal * float(REGIME_DRIFT[self.regime])

    def skew_now(self) -> float:
        return self.lean * SKEW_GAIN * self.drift_now() / DRIFT_SCALE + self.noise_x

    def _ar_blocks(self, x0: float, n: int, phi: float, std: float) -> np.ndarray:
        eps = self.rng.standard_normal(n) * std * math.sqrt(1 - phi * phi)
        out = np.empty(n)
        x = x0
        for i in range(n):
            x = phi * x + eps[i]
            out[i] = x
        return out

    def _next_regime(self, dev: float) -> int:
        """Draws the next regime, tilted against the price's distance from its slow anchor."""
        tilt = max(-1.0, min(1.0, dev / REVERT_SCALE))
        w = REGIME_PROB * np.exp(-REVERT_GAIN * tilt * np.sign(REGIME_DRIFT))
        return int(self.rng.choice(len(REGIME_DRIFT), p=w / w.sum()))

    def advance(self, t_ms: np.ndarray, rate_ms: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Steps to the message times `t_ms` (ms, increasing; the model stands at `t_ms[0] - dt`).

        Returns the log price, the regime drift (log-return per hour) and the size skew at each time.
        """
        rng = self.rng
        n = len(t_ms)
        if n == 0:
            return np.empty(0), np.empty(0), np.empty(0)
        dt_ms = np.empty(n, dtype=np.float64)
        dt_ms[0] = rate_ms
        dt_ms[1:] = np.diff(t_ms)
        elapsed = np.cumsum(dt_ms)

        # volatility multiplier: AR(1) on 5-minute blocks
        block = (elapsed // VOL_BLOCK_MS).astype(np.int64)
        vol = self._ar_blocks(self.vol_x, int(block[-1]) + 1, math.exp(-5.0 / VOL_TAU_MIN), VOL_SPREAD)
        self.vol_x = float(vol[-1])
        vol_mult = np.exp(vol[block] - 0.5 * VOL_SPREAD**2)

        # diffusion: at 100 ms the price moves in a share of the steps (bursts), same variance
        sigma = self.sigma_min * vol_mult * np.sqrt(dt_ms / 60_000.0)
        q = np.where(dt_ms <= 1.5 * rate_ms, min(1.0, MOVE_PROB * max(1.0, rate_ms / 100.0) ** 0.5), 1.0)
        moving = rng.random(n) < q
        incr = moving * rng.standard_normal(n) * sigma / np.sqrt(q)

        # jumps: a few a day, each spread over 10-60 s
        n_jumps = rng.poisson(JUMPS_PER_DAY * elapsed[-1] / DAY_MS)
        for _ in range(n_jumps):
            at = int(rng.integers(0, n))
            size = float(rng.normal(0.0, JUMP_SIZE))
            length = max(1, int(rng.uniform(*JUMP_SECONDS) * 1000 / rate_ms))
            stop = min(n, at + length)
            incr[at:stop] += size / (stop - at)
        noise_path = np.cumsum(incr)

        # drift regimes, 1-3 h each; the next one leans against the move away from the anchor
        drift = np.empty(n)
        start = 0
        passed = 0.0
        drift_sum = 0.0
        while start < n:
            end_time = passed + self.regime_left_ms
            stop = int(np.searchsorted(elapsed, end_time, side="left"))
            mu = self.drift_now()
            drift[start:stop] = mu
            if stop >= n:
                self.regime_left_ms = end_time - elapsed[-1]
                break
            seg_ms = elapsed[stop - 1] - (elapsed[start - 1] if start > 0 else 0.0)
            drift_sum += mu * seg_ms / 3_600_000.0
            now = self.log_price + (noise_path[stop - 1] if stop > 0 else 0.0) + drift_sum
            held_ms = end_time - passed
            self.anchor += (now - self.anchor) * (1.0 - math.exp(-held_ms / ANCHOR_TAU_MS))
            self.regime = self._next_regime(now - self.anchor)
            self.regime_left_ms = float(rng.uniform(*REGIME_HOURS) * 3_600_000)
            passed = end_time
            start = stop

        # size skew: the (signal-scaled) drift plus a slow noise (1-minute AR(1) blocks)
        minute = (elapsed // 60_000).astype(np.int64)
        noise = self._ar_blocks(self.noise_x, int(minute[-1]) + 1, math.exp(-1.0 / SKEW_NOISE_TAU_MIN),
                                SKEW_NOISE)
        self.noise_x = float(noise[-1])
        skew = self.lean * SKEW_GAIN * drift / DRIFT_SCALE + noise[minute]  # 1.0 * x == x: default bytes kept

        log_price = self.log_price + noise_path + np.cumsum(drift * dt_ms / 3_600_000.0)
        self.log_price = float(log_price[-1])
        return log_price, drift, skew


def price_path(days: int = 1, *, rate_ms: int = 1000, seed: int = 0, start_price: float | None = None,
               start: dt.date = dt.date(2025, 1, 1), signal: float = 1.0, symbol: str = "BTCUSDT") -> np.ndarray:
    """The mid price every `rate_ms` over `days` consecutive days, from the generator's model.

    Cheap (no book, no text): for checking the price dynamics on many days. `signal` as in
    `generate_days`; `symbol` picks the instrument (its price scale and random streams).
    """
    inst = instrument(symbol, "linear", start_price)
    path_rng, meta_rng = _streams(seed, start, inst)
    model = _PathModel(path_rng, _start_price(meta_rng, start_price, inst), signal)
    out = []
    per_day = DAY_MS // rate_ms
    t = np.arange(1, per_day + 1, dtype=np.int64) * rate_ms
    for _ in range(days):
        model.new_day()
        log_price, _, _ = model.advance(t, rate_ms)
        out.append(np.exp(log_price))
    return np.concatenate(out)


def _streams(seed: int, day: dt.date, inst: Instrument) -> tuple[np.random.Generator, np.random.Generator]:
    """The path's and the rest's random streams. One market per base asset: BTCUSDT (the streams
    as before instruments existed), its spot and BTCUSD inverse share them; every other base mixes
    its name in, so ETHUSDT does not move in lockstep with BTCUSDT."""
    entropy = [int(seed) & 0xFFFFFFFF, day.toordinal()]
    if inst.base != "BTC":
        entropy.append(zlib.crc32(inst.base.encode("ascii")))
    children = np.random.SeedSequence(entropy).spawn(2)
    return np.random.default_rng(children[0]), np.random.default_rng(children[1])


def _start_price(meta_rng: np.random.Generator, start_price: float | None, inst: Instrument) -> float:
    least = MIN_START_TICKS / inst.ticks_per_unit
    if start_price is None:
        return round(float(meta_rng.uniform(*inst.start_range)), inst.tick_decimals)
    if not (math.isfinite(start_price) and start_price >= least):
        raise ValueError(f"start_price must be at least {least:g} for {inst.symbol} "
                         f"({MIN_START_TICKS} ticks of {inst.tick:g}), got {start_price}")
    return float(start_price)


# =============================================================================================
# the book and the bytes (numba)
# =============================================================================================

# st (int64 state) slots; a side s is 0 (bids) or 1 (asks): best = st[s], deep = st[2+s], cnt = st[4+s]
ST_U, ST_MSG, ST_PENDING, ST_CROSS_TICK, ST_DEEP_TICK = 6, 7, 8, 9, 10
ST_SIZE = 12

# spec (int64, the instrument's numbers, `Instrument.spec`): a price is tick * PX_MULT / PX_UNIT
# written with PX_DECIMALS decimals; a size is lots / SZ_UNIT with SZ_DECIMALS; TRIM (spot) drops
# trailing zeros of both; LOTS lots make one unit of the book model's size (BTC: 1000), SIZE_MAX
# caps a level; LEVEL_BYTES bounds one written level (a buffer is flushed before a line could overflow it)
SP_PX_MULT, SP_PX_UNIT, SP_PX_DECIMALS, SP_SZ_UNIT, SP_SZ_DECIMALS, SP_TRIM, SP_LOTS, SP_SIZE_MAX = range(8)
SP_LEVEL_BYTES = 8
SP_SIZE = 9


@njit(cache=True, nogil=True, inline="always")
def _next(rng):
    x = rng[0]
    x ^= x >> np.uint64(12)
    x ^= x << np.uint64(25)
    x ^= x >> np.uint64(27)
    rng[0] = x
    return x * np.uint64(2685821657736338717)


@njit(cache=True, nogil=True, inline="always")
def _uniform(rng):
    return (_next(rng) >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@njit(cache=True, nogil=True)
def _normal(rng):
    u1 = _uniform(rng)
    if u1 < 1e-300:
        u1 = 1e-300
    u2 = _uniform(rng)
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(6.283185307179586 * u2)


@njit(cache=True, nogil=True)
def _poisson(rng, lam):
    limit = math.exp(-lam)
    k = 0
    prod = _uniform(rng)
    while prod > limit and k < RANDOM_MAX:
        k += 1
        prod *= _uniform(rng)
    return k


@njit(cache=True, nogil=True)
def _p_occupied(d):
    return P_DEEP + (P_TOP - P_DEEP) * math.exp(-d / P_DECAY)


@njit(cache=True, nogil=True)
def _draw_size(rng, s, d, skew, spec):
    """A level's size in lots (BTCUSDT: thousandths of a BTC); spec[SP_LOTS] lots a model unit."""
    base = SIZE_DEEP + SIZE_TOP * math.exp(-d / SIZE_DECAY)
    k = skew if s == 0 else -skew
    # float(1000) is 1000.0: BTCUSDT's sizes are the same numbers as before instruments existed
    q = int(base * math.exp(SIZE_SIGMA * _normal(rng) + k) * float(spec[SP_LOTS]) + 0.5)
    if q < 1:
        q = 1
    if q > spec[SP_SIZE_MAX]:
        q = spec[SP_SIZE_MAX]
    return q


@njit(cache=True, nogil=True)
def _record(s, t, size, sz, stamp, pos, ent_t, ent_s, n_ent, msg):
    j = t & MASK
    sz[s, j] = size
    if stamp[s, j] == msg:
        ent_s[s, pos[s, j]] = size
    else:
        k = n_ent[s]
        stamp[s, j] = msg
        pos[s, j] = k
        ent_t[s, k] = t
        ent_s[s, k] = size
        n_ent[s] = k + 1


@njit(cache=True, nogil=True)
def _insert(s, t, size, st, sz, stamp, pos, ent_t, ent_s, n_ent, msg):
    sgn = 1 if s == 0 else -1
    _record(s, t, size, sz, stamp, pos, ent_t, ent_s, n_ent, msg)
    st[4 + s] += 1
    if st[4 + s] == 1 or sgn * (st[2 + s] - t) > 0:
        st[2 + s] = t


@njit(cache=True, nogil=True)
def _delete(s, t, st, sz, stamp, pos, ent_t, ent_s, n_ent, msg):
    sgn = 1 if s == 0 else -1
    _record(s, t, 0, sz, stamp, pos, ent_t, ent_s, n_ent, msg)
    st[4 + s] -= 1
    if st[4 + s] > 0 and t == st[2 + s]:
        u = t + sgn
        while sz[s, u & MASK] == 0:
            u += sgn
        st[2 + s] = u


@njit(cache=True, nogil=True)
def _move(s, new_best, skew, depth, st, sz, stamp, pos, ent_t, ent_s, n_ent, msg, rng, spec):
    """Moves side s's best level to `new_best`: inserts the ticks it improves over, deletes the
    levels it falls below."""
    sgn = 1 if s == 0 else -1
    old = st[s]
    if st[4 + s] == 0:
        _insert(s, new_best, _draw_size(rng, s, 0, skew, spec), st, sz, stamp, pos, ent_t, ent_s, n_ent, msg)
    elif sgn * (new_best - old) > 0:
        if sz[s, new_best & MASK] == 0:
            _insert(s, new_best, _draw_size(rng, s, 0, skew, spec), st, sz, stamp, pos, ent_t, ent_s, n_ent, msg)
        t = new_best - sgn
        k = 1
        while sgn * (t - old) > 0 and k < depth:
            d = sgn * (new_best - t)
            if sz[s, t & MASK] == 0 and _uniform(rng) < _p_occupied(d):
                _insert(s, t, _draw_size(rng, s, d, skew, spec), st, sz, stamp, pos, ent_t, ent_s, n_ent, msg)
                k += 1
            t -= sgn
    elif sgn * (new_best - old) < 0:
        t = old
        while sgn * (t - new_best) > 0 and st[4 + s] > 0:
            if sz[s, t & MASK] != 0:
                _delete(s, t, st, sz, stamp, pos, ent_t, ent_s, n_ent, msg)
            t -= sgn
        if sz[s, new_best & MASK] == 0:
            _insert(s, new_best, _draw_size(rng, s, 0, skew, spec), st, sz, stamp, pos, ent_t, ent_s, n_ent, msg)
    st[s] = new_best


@njit(cache=True, nogil=True)
def _random_updates(s, skew, st, sz, stamp, pos, ent_t, ent_s, n_ent, msg, rng, spec):
    sgn = 1 if s == 0 else -1
    n = _poisson(rng, RANDOM_UPDATES)
    for _ in range(n):
        mean = NEAR_MEAN if _uniform(rng) < NEAR_SHARE else FAR_MEAN
        d = int(-math.log(1.0 - _uniform(rng)) * mean)
        t = st[s] - sgn * d
        if sgn * (st[2 + s] - t) > 0:
            continue  # beyond the window
        old = sz[s, t & MASK]
        if old != 0:
            if d > 0 and _uniform(rng) < DELETE_PROB:
                _delete(s, t, st, sz, stamp, pos, ent_t, ent_s, n_ent, msg)
            else:
                if _uniform(rng) < REFRESH_PROB:
                    size = _draw_size(rng, s, d, skew, spec)
                else:
                    size = int(old * math.exp(0.3 * _normal(rng)) + 0.5)
                    size = min(max(size, 1), spec[SP_SIZE_MAX])
                    if size == old:
                        size = old + 1 if old < spec[SP_SIZE_MAX] else old - 1
                _record(s, t, size, sz, stamp, pos, ent_t, ent_s, n_ent, msg)
        else:
            _insert(s, t, _draw_size(rng, s, d, skew, spec), st, sz, stamp, pos, ent_t, ent_s, n_ent, msg)


@njit(cache=True, nogil=True)
def _fix_window(s, skew, depth, st, sz, stamp, pos, ent_t, ent_s, n_ent, msg, rng, spec):
    """Exactly `depth` levels: delete the deepest beyond it, insert deeper levels below it."""
    sgn = 1 if s == 0 else -1
    while st[4 + s] > depth:
        _delete(s, st[2 + s], st, sz, stamp, pos, ent_t, ent_s, n_ent, msg)
    while st[4 + s] < depth:
        t = st[2 + s] - sgn
        while _uniform(rng) >= _p_occupied(sgn * (st[s] - t)):
            t -= sgn
        _insert(s, t, _draw_size(rng, s, sgn * (st[s] - t), skew, spec), st, sz, stamp, pos, ent_t, ent_s,
                n_ent, msg)


@njit(cache=True, nogil=True)
def _init_book(best_bid, best_ask, skew, depth, st, sz, stamp, pos, ent_t, ent_s, n_ent, rng, spec):
    msg = st[ST_MSG]
    for s in range(2):
        st[4 + s] = 0
        st[s] = best_bid if s == 0 else best_ask
        _insert(s, st[s], _draw_size(rng, s, 0, skew, spec), st, sz, stamp, pos, ent_t, ent_s, n_ent, msg)
        _fix_window(s, skew, depth, st, sz, stamp, pos, ent_t, ent_s, n_ent, msg, rng, spec)
    n_ent[0] = 0
    n_ent[1] = 0


@njit(cache=True, nogil=True)
def _put(out, p, word):
    n = word.shape[0]
    out[p:p + n] = word
    return p + n


@njit(cache=True, nogil=True)
def _put_uint(out, p, v):
    if v == 0:
        out[p] = 48
        return p + 1
    n = 0
    x = v
    while x > 0:
        n += 1
        x //= 10
    q = p + n - 1
    while v > 0:
        out[q] = 48 + v % 10
        v //= 10
        q -= 1
    return p + n


@njit(cache=True, nogil=True)
def _put_fixed(out, p, v, unit, decimals, trim):
    """v / unit (unit = 10**decimals) with `decimals` decimals, or without trailing zeros (`trim`):
    1234567 at 2 decimals is "12345.67"; 1234500 is "12345.00", trimmed "12345"."""
    p = _put_uint(out, p, v // unit)
    r = v % unit
    if decimals == 0 or (trim and r == 0):
        return p
    if trim:
        while r % 10 == 0:
            r //= 10
            decimals -= 1
    out[p] = 46  # .
    q = p + decimals
    for _ in range(decimals):
        out[q] = 48 + r % 10
        r //= 10
        q -= 1
    return p + 1 + decimals


@njit(cache=True, nogil=True)
def _put_level(out, p, tick, size, first, spec):
    """`["price","size"]` (after a comma unless `first`): the price is `tick` ticks written with
    spec[SP_PX_DECIMALS] decimals, the size `size` lots with spec[SP_SZ_DECIMALS]; "0" deletes;
    spec[SP_TRIM] drops trailing zeros (spot)."""
    if not first:
        out[p] = 44  # ,
        p += 1
    out[p] = 91  # [
    out[p + 1] = 34  # "
    trim = spec[SP_TRIM] != 0
    p = _put_fixed(out, p + 2, tick * spec[SP_PX_MULT], spec[SP_PX_UNIT], spec[SP_PX_DECIMALS], trim)
    out[p] = 34
    out[p + 1] = 44
    out[p + 2] = 34
    p += 3
    if size == 0:
        out[p] = 48
        p += 1
    else:
        p = _put_fixed(out, p, size, spec[SP_SZ_UNIT], spec[SP_SZ_DECIMALS], trim)
    out[p] = 34
    out[p + 1] = 93  # ]
    return p + 2


@njit(cache=True, nogil=True)
def _sort_entries(ent_t, ent_s, s, n, descending):
    for i in range(1, n):
        t = ent_t[s, i]
        z = ent_s[s, i]
        j = i - 1
        while j >= 0 and ((ent_t[s, j] < t) if descending else (ent_t[s, j] > t)):
            ent_t[s, j + 1] = ent_t[s, j]
            ent_s[s, j + 1] = ent_s[s, j]
            j -= 1
        ent_t[s, j + 1] = t
        ent_s[s, j + 1] = z


@njit(cache=True, nogil=True)
def _narrow(skew, depth, st, sz, rng, spec):
    """narrow_restart: each side keeps its top depth // NARROW_SHARE levels, each with a new size."""
    keep = max(1, depth // NARROW_SHARE)
    for s in range(2):
        sgn = 1 if s == 0 else -1
        t = st[s]
        last = t
        n = st[4 + s]
        for j in range(n):
            while sz[s, t & MASK] == 0:
                t -= sgn
            if j < keep:
                old = sz[s, t & MASK]
                size = _draw_size(rng, s, sgn * (st[s] - t), skew, spec)
                if size == old:
                    size = old + 1 if old < spec[SP_SIZE_MAX] else old - 1
                sz[s, t & MASK] = size
                last = t
            else:
                sz[s, t & MASK] = 0
            t -= sgn
        if n > keep:
            st[4 + s] = keep
        st[2 + s] = last


@njit(cache=True, nogil=True)
def _one_sided_cross(skew, st, sz, stamp, pos, ent_t, ent_s, n_ent, msg, rng, spec):
    """one_sided_cross: a bid CROSS_TICKS above the best ask, the deepest bid leaving (bids only in
    the message); then the replay's repair on our own book, unwritten: the asks at or below it go."""
    cross = st[1] + CROSS_TICKS
    _delete(0, st[2], st, sz, stamp, pos, ent_t, ent_s, n_ent, msg)
    _insert(0, cross, _draw_size(rng, 0, 0, skew, spec), st, sz, stamp, pos, ent_t, ent_s, n_ent, msg)
    st[0] = cross
    t = st[1]
    while t <= cross:
        if sz[1, t & MASK] != 0:
            sz[1, t & MASK] = 0
            st[5] -= 1
        t += 1
    if st[5] > 0:
        while sz[1, t & MASK] == 0:
            t += 1
    st[1] = t


@njit(cache=True, nogil=True)
def _fill(kinds, bb, ex, skew, ts, cts, seq, i0, out, depth, st, sz, stamp, pos, ent_t, ent_s, n_ent,
          rng, spec, w_topic, w_delta, w_snapshot, w_asks, w_u, w_seq, w_cts, w_end):
    """Applies and writes messages i0.. into `out` until it is nearly full; returns (next i, bytes)."""
    n = kinds.shape[0]
    line_max = 2 * (2 * ent_t.shape[1] * spec[SP_LEVEL_BYTES] + 512)
    p = 0
    i = i0
    while i < n and out.shape[0] - p >= line_max:
        kind = kinds[i]
        p0 = p
        p = _put(out, p, w_topic)
        p = _put_uint(out, p, ts[i])
        if kind == K_SNAPSHOT or kind == K_RESTART or kind == K_NARROW:  # noqa: SIM109 - numba: no tuple
            st[ST_PENDING] = 0
            if kind == K_RESTART or kind == K_NARROW:  # noqa: SIM109
                st[ST_U] = 1
            if kind == K_NARROW:
                _narrow(skew[i], depth, st, sz, rng, spec)
            p = _put(out, p, w_snapshot)
            for s in range(2):
                if s == 1:
                    p = _put(out, p, w_asks)
                sgn = 1 if s == 0 else -1
                t = st[s]
                first = True
                for _ in range(st[4 + s]):
                    while sz[s, t & MASK] == 0:
                        t -= sgn
                    p = _put_level(out, p, t, sz[s, t & MASK], first, spec)
                    first = False
                    t -= sgn
        else:
            msg = st[ST_MSG] + 1
            st[ST_MSG] = msg
            n_ent[0] = 0
            n_ent[1] = 0
            k = skew[i]
            if st[ST_PENDING] != 0:  # undo last message's crossing bid, restore the deep bid
                st[ST_PENDING] = 0
                _record(0, st[ST_CROSS_TICK], 0, sz, stamp, pos, ent_t, ent_s, n_ent, msg)
                d_tick = st[ST_DEEP_TICK]
                _record(0, d_tick, sz[0, d_tick & MASK], sz, stamp, pos, ent_t, ent_s, n_ent, msg)
            if kind == K_ONE_SIDED:
                _one_sided_cross(k, st, sz, stamp, pos, ent_t, ent_s, n_ent, msg, rng, spec)
            else:
                _move(0, bb[i], k, depth, st, sz, stamp, pos, ent_t, ent_s, n_ent, msg, rng, spec)
                _move(1, bb[i] + 1 + ex[i], k, depth, st, sz, stamp, pos, ent_t, ent_s, n_ent, msg, rng, spec)
                for s in range(2):
                    _random_updates(s, k, st, sz, stamp, pos, ent_t, ent_s, n_ent, msg, rng, spec)
                for s in range(2):
                    _fix_window(s, k, depth, st, sz, stamp, pos, ent_t, ent_s, n_ent, msg, rng, spec)
            if kind == K_CROSSED:
                # a bid one tick above the best ask; the deepest bid leaves so the count stays
                # `depth`; the ask side is touched too. Undone by the next delta.
                _record(1, st[1], _draw_size(rng, 1, 0, k, spec), sz, stamp, pos, ent_t, ent_s, n_ent, msg)
                d_tick = st[2]
                j = d_tick & MASK
                if stamp[0, j] == msg:
                    ent_s[0, pos[0, j]] = 0
                else:
                    stamp[0, j] = msg
                    pos[0, j] = n_ent[0]
                    ent_t[0, n_ent[0]] = d_tick
                    ent_s[0, n_ent[0]] = 0
                    n_ent[0] += 1
                cross = st[1] + 1
                j = cross & MASK
                if stamp[0, j] == msg:
                    ent_s[0, pos[0, j]] = _draw_size(rng, 0, 0, k, spec)
                else:
                    stamp[0, j] = msg
                    pos[0, j] = n_ent[0]
                    ent_t[0, n_ent[0]] = cross
                    ent_s[0, n_ent[0]] = _draw_size(rng, 0, 0, k, spec)
                    n_ent[0] += 1
                st[ST_PENDING] = 1
                st[ST_CROSS_TICK] = cross
                st[ST_DEEP_TICK] = d_tick
            st[ST_U] += 1 + (GAP_SKIP if kind == K_GAP else 0)
            p = _put(out, p, w_delta)
            for s in range(2):
                if s == 1:
                    p = _put(out, p, w_asks)
                m = n_ent[s]
                _sort_entries(ent_t, ent_s, s, m, s == 0)
                for e in range(m):
                    p = _put_level(out, p, ent_t[s, e], ent_s[s, e], e == 0, spec)
        p = _put(out, p, w_u)
        p = _put_uint(out, p, st[ST_U])
        p = _put(out, p, w_seq)
        p = _put_uint(out, p, seq[i])
        p = _put(out, p, w_cts)
        p = _put_uint(out, p, cts[i])
        p = _put(out, p, w_end)
        if kind == K_MALFORMED:  # a copy of the line cut in the middle follows it
            half = (p - 2 - p0) // 2
            out[p:p + half] = out[p0:p0 + half]
            p += half
            out[p] = 13
            out[p + 1] = 10
            p += 2
        i += 1
    return i, p


# =============================================================================================
# the driver
# =============================================================================================


class _Market:
    """Everything carried from one generated day to the next."""

    def __init__(self, *, seed: int, first_day: dt.date, symbol: str, depth: int | None, rate_ms: int,
                 start_price: float | None, signal: float, flip: bool = False, category: str = "linear"):
        inst = instrument(symbol, category, start_price)
        depth = CATEGORY_DEPTH[category] if depth is None else depth
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if rate_ms < 1:
            raise ValueError(f"rate_ms must be >= 1, got {rate_ms}")
        self.inst, self.spec = inst, inst.spec()
        self.symbol, self.category, self.depth, self.rate_ms = symbol, category, depth, rate_ms
        path_rng, self.meta = _streams(seed, first_day, inst)
        self.path = _PathModel(path_rng, _start_price(self.meta, start_price, inst), signal, flip)
        self.st = np.zeros(ST_SIZE, dtype=np.int64)
        self.st[ST_U] = int(self.meta.integers(1_000_000, 60_000_000))
        self.st[ST_MSG] = 0
        self.seq = int(self.meta.integers(10**10, 2 * 10**11))
        self.sz = np.zeros((2, RING), dtype=np.int64)
        self.stamp = np.full((2, RING), -1, dtype=np.int64)
        self.pos = np.zeros((2, RING), dtype=np.int64)
        cap = 4 * depth + 4 * RANDOM_MAX + 64
        self.ent_t = np.zeros((2, cap), dtype=np.int64)
        self.ent_s = np.zeros((2, cap), dtype=np.int64)
        self.n_ent = np.zeros(2, dtype=np.int64)
        self.rng = np.array([self.meta.integers(1, 2**63 - 1)], dtype=np.uint64)
        self.book_ready = False
        self.carried_open: tuple[int, int, int] | None = None  # (ts, cts, seq) of the next-day snapshot
        self.next_day: dt.date | None = None
        self.words = self._words()

    def _words(self) -> tuple[np.ndarray, ...]:
        def w(text: str) -> np.ndarray:
            return np.frombuffer(text.encode("ascii"), dtype=np.uint8).copy()

        s = self.symbol
        return (
            w(f'{{"topic":"orderbook.{self.depth}.{s}","ts":'),
            w(f',"type":"delta","data":{{"s":"{s}","b":['),
            w(f',"type":"snapshot","data":{{"s":"{s}","b":['),
            w('],"a":['),
            w('],"u":'),
            w(',"seq":'),
            w('},"cts":'),
            w('}\r\n'),
        )

    def _seqs(self, n: int) -> np.ndarray:
        steps = self.meta.integers(1, 600, n)
        out = self.seq + np.cumsum(steps)
        self.seq = int(out[-1]) if n else self.seq
        return out

    def write_day(self, day: dt.date, out_dir: Path, faults: tuple[str, ...], duration_s: int | None) -> Path:
        unknown = sorted(set(faults) - set(FAULTS))
        if unknown:
            raise ValueError(f"unknown fault(s) {unknown}; choose from {FAULTS}")
        if duration_s is not None and not 1 <= duration_s <= 86_400:
            raise ValueError(f"duration_s must be in 1..86400, got {duration_s}")
        if self.next_day is not None and day != self.next_day:
            raise ValueError(f"days must be consecutive: expected {self.next_day}, got {day}")
        self.next_day = day + dt.timedelta(days=1)
        meta, rate = self.meta, self.rate_ms
        start_ms = _day_start_ms(day)
        limit = DAY_MS if duration_s is None else duration_s * 1000
        jitter_max = max(0, min(8, rate // 4))

        # message times (ms after midnight): opening snapshot, deltas, maybe the next day's snapshot
        if self.carried_open is not None:
            open_ts, open_cts, open_seq = self.carried_open
            offset = open_ts - start_ms
        else:
            offset = int(meta.integers(150, 950))
            open_ts = start_ms + offset
            open_cts = open_ts - int(meta.integers(1, 12))
            open_seq = int(self._seqs(1)[0])
        n_delta = max(0, (limit - offset - jitter_max - 1) // rate)
        rel = offset + rate * np.arange(1, n_delta + 1, dtype=np.int64)
        if jitter_max:
            rel = rel + meta.integers(0, jitter_max + 1, n_delta)
        kinds = np.zeros(n_delta, dtype=np.int8)
        at = fault_times(duration_s)
        if "silence" in faults and n_delta:
            s0, length = at["silence"]
            keep = (rel < s0) | (rel >= s0 + length)
            rel, kinds = rel[keep], kinds[keep]
        if "boundary" in faults and len(rel):
            # one delta exactly on the boundary, then nothing until the next one
            edge = at["boundary"][0]
            j = int(np.searchsorted(rel, edge, side="right")) - 1
            if j >= 0:
                rel[j] = edge
                keep = (rel <= edge) | (rel >= edge + 1000)
                rel, kinds = rel[keep], kinds[keep]
        for name, kind in (("crossed", K_CROSSED), ("gap", K_GAP), ("malformed", K_MALFORMED),
                           ("restart", K_RESTART)):
            if name in faults and len(rel):
                idx = min(int(np.searchsorted(rel, at[name][0])), len(rel) - 1)
                kinds[idx] = kind
        for name, kind in (("narrow_restart", K_NARROW), ("one_sided_cross", K_ONE_SIDED)):
            if name in faults and len(rel):  # the last message before the sample at that second
                idx = max(0, int(np.searchsorted(rel, at[name][0], side="left")) - 1)
                kinds[idx] = kind
        n_delta = len(rel)

        self.path.new_day()
        log_price, _, skew = self.path.advance(rel, rate)
        price_ticks = np.exp(log_price) * self.inst.ticks_per_unit
        bb = np.floor(price_ticks).astype(np.int64)
        if n_delta > 1 and int(np.abs(np.diff(bb)).max()) > RING // 4:
            raise ValueError("the price moved too far within one message for the book ring")
        ex = np.where(meta.random(n_delta) < EXTRA_SPREAD_PROB, meta.integers(1, 4, n_delta), 0).astype(np.int64)
        ts = start_ms + rel
        cts = ts - meta.integers(1, 12, n_delta)
        seq = self._seqs(n_delta)

        if not self.book_ready:
            b0 = math.floor(math.exp(self.path.log_price if n_delta == 0 else log_price[0])
                            * self.inst.ticks_per_unit)
            _init_book(b0, b0 + 1, self.path.skew_now(), self.depth, self.st, self.sz, self.stamp, self.pos,
                       self.ent_t, self.ent_s, self.n_ent, self.rng, self.spec)
            self.book_ready = True

        # the opening snapshot: first, or (early_deltas) after the deltas before its time
        open_at = 0
        if "early_deltas" in faults and n_delta:
            early_end = at["early_deltas"][0]
            open_at = max(1, int(np.searchsorted(rel, early_end)))
            lag = open_ts - open_cts
            open_ts = max(start_ms + early_end, int(ts[open_at - 1]))
            open_cts = open_ts - lag
            open_seq = int(seq[open_at - 1]) + 1
            seq[open_at:] += 1
        kinds = np.insert(kinds, open_at, K_SNAPSHOT)
        bb = np.insert(bb, open_at, 0)
        ex = np.insert(ex, open_at, 0)
        skew = np.insert(skew, open_at, 0.0)
        ts = np.insert(ts, open_at, open_ts)
        cts = np.insert(cts, open_at, open_cts)
        seq = np.insert(seq, open_at, open_seq)
        if duration_s is None:
            next_ts = start_ms + DAY_MS + int(meta.integers(150, 950))
            next_cts = next_ts - int(meta.integers(1, 12))
            next_seq = int(self._seqs(1)[0])
            self.carried_open = (next_ts, next_cts, next_seq)
            kinds = np.append(kinds, np.int8(K_SNAPSHOT))
            bb = np.append(bb, 0)
            ex = np.append(ex, 0)
            skew = np.append(skew, 0.0)
            ts = np.append(ts, next_ts)
            cts = np.append(cts, next_cts)
            seq = np.append(seq, next_seq)
        else:
            self.carried_open = None
        kinds = kinds.astype(np.int8)
        bb, ex = bb.astype(np.int64), ex.astype(np.int64)
        skew = skew.astype(np.float64)
        ts, cts, seq = ts.astype(np.int64), cts.astype(np.int64), seq.astype(np.int64)

        path = archive_path(Path(out_dir), day, self.symbol, self.depth, self.category)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._write_zip(path, kinds, bb, ex, skew, ts, cts, seq)
        if "truncated" in faults:
            size = path.stat().st_size
            os.truncate(path, int(size * TRUNCATE_KEEP))
        return path

    def _write_zip(self, path: Path, kinds, bb, ex, skew, ts, cts, seq) -> None:
        member = path.name[: -len(".zip")]
        tmp = path.with_name(path.name + ".part")
        buffers = [np.empty(BUFFER_BYTES, dtype=np.uint8) for _ in range(2)]
        n = len(kinds)

        def fill(i0: int, buf: np.ndarray) -> tuple[int, int]:
            return _fill(kinds, bb, ex, skew, ts, cts, seq, i0, buf, self.depth, self.st, self.sz, self.stamp,
                         self.pos, self.ent_t, self.ent_s, self.n_ent, self.rng, self.spec, *self.words)

        try:
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf, \
                    zf.open(member, "w", force_zip64=True) as f, ThreadPoolExecutor(1) as pool:
                which = 0
                job = pool.submit(fill, 0, buffers[which])
                while True:
                    i, nbytes = job.result()
                    full = buffers[which]
                    if i < n:
                        which ^= 1
                        job = pool.submit(fill, i, buffers[which])
                    f.write(full.data[:nbytes])
                    if i >= n:
                        break
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()


def generate_day(day: dt.date, out_dir: Path, *, symbol: str = "BTCUSDT", depth: int | None = None,
                 rate_ms: int = 100, seed: int = 0, faults: tuple[str, ...] = (), start_price: float | None = None,
                 duration_s: int | None = None, signal: float = 1.0, category: str = "linear") -> Path:
    """Writes one synthetic day; returns the ZIP's path. Deterministic for (seed, day, arguments).

    `signal` (>= 0) is the strength of the planted signal: 1.0 the default market, 0 NULL data
    with no directional information (see the module docstring). `symbol` and `category`
    (linear, spot, inverse) pick the instrument (`instrument`: price scale, tick, how numbers are
    written) and the folder (`archive_path`); `depth` defaults to the category's archive
    (CATEGORY_DEPTH: 200, inverse 500).
    """
    market = _Market(seed=seed, first_day=day, symbol=symbol, depth=depth, rate_ms=rate_ms,
                     start_price=start_price, signal=signal, category=category)
    return market.write_day(day, Path(out_dir), tuple(faults), duration_s)


def generate_days(start: dt.date, days: int, out_dir: Path, *, symbol: str = "BTCUSDT", depth: int | None = None,
                  rate_ms: int = 100, seed: int = 0, faults: tuple[str, ...] = (),
                  duration_s: int | None = None, signal: float = 1.0,
                  on_day: Callable[[Path], None] | None = None, flip: bool = False,
                  category: str = "linear") -> list[Path]:
    """Writes `days` consecutive, continuous days (one market, one seed stream); returns the paths.

    The first day is byte-identical to `generate_day(start, ..., seed=seed)`. With `duration_s`
    each day holds only its first `duration_s` seconds and no next-day snapshot. `signal` (>= 0)
    is the strength of the planted signal: 1.0 the default market, 0 NULL data with no
    directional information (see the module docstring). `on_day` is called with each day's path
    as soon as it is written (progress reports). `flip`: the book leans against the drift (the
    signal's sign flipped; the same random draws, so the same prices as without it). `symbol`,
    `category` and `depth` as in `generate_day`.
    """
    if days < 0:
        raise ValueError(f"days must be >= 0, got {days}")
    market = _Market(seed=seed, first_day=start, symbol=symbol, depth=depth, rate_ms=rate_ms, start_price=None,
                     signal=signal, flip=flip, category=category)
    paths = []
    for i in range(days):
        paths.append(market.write_day(start + dt.timedelta(days=i), Path(out_dir), tuple(faults), duration_s))
        if on_day is not None:
            on_day(paths[-1])
    return paths
