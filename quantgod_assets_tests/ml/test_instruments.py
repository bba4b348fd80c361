"""Models across instruments: one stacked matrix of instrument blocks, windows that never cross
them, one calendar cut for all, per-instrument scaling, per-instrument and unseen test scores."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest
import yaml

from quantgod_assets.labelling import label_day_files
from quantgod_assets.ml.data import prepare_data, range_test_start, training_ranges
from quantgod_assets.ml.dataset import BlockScaler, MissingDaysError, Scaler, rows_covered
from quantgod_assets.ml.splits import calendar_walk_forward, walk_forward_split

from ..builders import make_day_frame, make_env

DAYS = [dt.date(2025, 3, 10) + dt.timedelta(days=k) for k in range(4)]
N_LEVELS = 5
SEQ_LEN = 10
ETH_LATE_MINUTES = 300  # ETHUSDT's first day starts 5 h late: fewer rows, the same calendar cut


def _write_instrument(settings, key: str, *, size_factor: float = 1.0, price: float = 30_000.0, seed: int = 0,
                      skip_first: int = 0) -> None:
    s = settings.for_instrument(key)
    pre = s.paths.preprocessed_dir
    pre.mkdir(parents=True, exist_ok=True)
    for k, day in enumerate(DAYS):
        rng = np.random.default_rng(seed + k)
        prices = price * np.exp(np.cumsum(rng.normal(0, 5e-4, 1440)))
        frame = make_day_frame(day, prices, filled_levels=N_LEVELS, seed=seed + k)
        frame = frame.with_columns(pl.col(r"^(bid|ask)_sz_\d+$") * size_factor)
        if k == 0 and skip_first:
            frame = frame.slice(skip_first)
        frame.write_parquet(pre / f"{day.isoformat()}.parquet")
    for day in DAYS:
        label_day_files(pre, s.paths.labelled_dir, day, lookahead=s.labelling.lookahead)


@pytest.fixture(scope="module")
def two_instruments(tmp_path_factory):
    """BTCUSDT and ETHUSDT (sizes 100x, starting 5 h late) trained on, SOLUSDT unseen."""
    from quantgod_assets.settings import load_settings

    env = make_env(tmp_path_factory.mktemp("instruments"), {})
    env.set_etl(instruments=[{"symbol": "BTCUSDT"}, {"symbol": "ETHUSDT"}, {"symbol": "SOLUSDT"}])
    path = env.config_dir / "training.yaml"
    config = yaml.safe_load(path.read_text())
    config.update(instruments=["BTCUSDT_linear", "ETHUSDT_linear"], unseen_instruments=["SOLUSDT_linear"])
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.env().items():
            mp.setenv(key, value)
        mp.delenv("QUANTGOD_SYMBOL")
        settings = load_settings()
    settings = settings.model_copy(update={"optimization": settings.optimization.model_copy(update={"folds": 2})})
    _write_instrument(settings, "BTCUSDT_linear", seed=0)
    _write_instrument(settings, "ETHUSDT_linear", size_factor=100.0, price=2_000.0, seed=10,
                      skip_first=ETH_LATE_MINUTES)
    _write_instrument(settings, "SOLUSDT_linear", size_factor=10.0, price=150.0, seed=20)
    return settings


@pytest.fixture(scope="module")
def data(two_instruments):
    return prepare_data(two_instruments, n_levels=N_LEVELS, seq_len=SEQ_LEN, with_prices=True)


def test_the_settings_train_on_two_instruments(two_instruments):
    assert [i.key for i in two_instruments.training_instruments] == ["BTCUSDT_linear", "ETHUSDT_linear"]
    assert two_instruments.model_key == "BTCUSDT_linear+ETHUSDT_linear"


def test_the_blocks_are_the_instruments_and_no_window_crosses_them(data):
    assert data.instrument_keys == ["BTCUSDT_linear", "ETHUSDT_linear"]
    btc_rows = 4 * 1440
    assert data.block_starts.tolist() == [0, btc_rows]
    assert data.arrays.n_rows == btc_rows + 4 * 1440 - ETH_LATE_MINUTES
    ends = data.windows.ends
    starts = ends - SEQ_LEN + 1
    assert (data.instrument_of(starts) == data.instrument_of(ends)).all()  # no window crosses a block boundary
    # both instruments have windows, and every window's minutes are consecutive within its block
    assert set(np.unique(data.instrument_of(ends)).tolist()) == {0, 1}
    assert (data.minutes[ends] - data.minutes[starts] == SEQ_LEN - 1).all()
    # the prices read per instrument: ETH's rows carry ETH's price scale
    assert data.prices is not None
    assert data.prices[:btc_rows].min() > 10_000 and data.prices[btc_rows:].max() < 10_000


def test_one_calendar_cut_for_every_instrument(data, two_instruments):
    cut = int(data.test_start.timestamp()) // 60
    test = data.split.test
    purge = data.split.purge
    for b, key in enumerate(data.instrument_keys):
        on = data.instrument_ends(test, key)
        assert on.size, key
        assert data.minutes[on].min() - cut < 2  # each instrument's test block starts at the cut
        assert (data.minutes[on] >= cut).all()
        others = data.instrument_ends(data.windows.ends, b)
        # every window of the instrument from the cut on is a test window
        np.testing.assert_array_equal(others[data.minutes[others] >= cut], on)
        for fold in data.folds:
            for part in (fold.train, fold.val):
                mine = data.instrument_ends(part, b)
                assert (data.minutes[mine] <= cut - purge - 1).all()
    # ETH has 300 fewer rows; its own row share would cut later, the shared calendar does not
    eth = data.block_rows(1)
    from quantgod_assets.ml.splits import test_start_minute

    assert test_start_minute(data.minutes[eth], 0.15) != cut
    # the fold boundaries are the same minutes for both: validation starts after the same training minute
    for fold in data.folds:
        last_train = data.minutes[fold.train].max()
        for b in (0, 1):
            val = data.instrument_ends(fold.val, b)
            assert val.size and data.minutes[val].min() >= last_train + purge + 1
    assert range_test_start(two_instruments, training_ranges(two_instruments)) == data.test_start


def test_calendar_walk_forward_is_walk_forward_split_for_one_instrument():
    rng = np.random.default_rng(3)
    minutes = np.cumsum(rng.integers(1, 3, 5000)).astype(np.int64)
    ends = np.sort(rng.choice(np.arange(20, 5000), 3000, replace=False)).astype(np.int64)
    cut = int(minutes[4200])
    old = walk_forward_split(ends, 60, 10, 0.15, 3, minutes, 5, cut)
    new = calendar_walk_forward(ends, minutes[ends], 60, 10, 3, cut, 5)
    np.testing.assert_array_equal(old.test, new.test)
    assert len(old.folds) == len(new.folds) == 3
    for a, b in zip(old.folds, new.folds):
        np.testing.assert_array_equal(a.train, b.train)
        np.testing.assert_array_equal(a.val, b.val)


def test_each_instrument_is_scaled_with_its_own_training_rows(data):
    scaler = data.scaler
    assert isinstance(scaler, BlockScaler) and scaler.keys == data.instrument_keys
    size = next(k for k, name in enumerate(data.arrays.feature_names) if "sz" in name)
    btc, eth = scaler.scalers
    # log sizes: 100x the sizes is log(100) higher
    assert abs((eth.mean[size] - btc.mean[size]) - np.log(100)) < 0.5
    # each is fitted on exactly its training rows
    rows = rows_covered(data.split.train, SEQ_LEN, data.arrays.n_rows)
    for b, fitted in enumerate(scaler.scalers):
        mask = np.zeros_like(rows)
        mask[data.block_rows(b)] = rows[data.block_rows(b)]
        expected = Scaler.fit(data.features, mask)
        np.testing.assert_allclose(fitted.mean, expected.mean)
        np.testing.assert_allclose(fitted.std, expected.std)
    # a window is scaled with its instrument's statistics
    ds = data.dataset("test")
    e = int(data.instrument_ends(data.split.test, 1)[0])
    i = int(np.searchsorted(data.split.test, e))
    window = ds[i][0].numpy()
    expected_window = eth.transform(data.features[e - SEQ_LEN + 1 : e + 1])
    np.testing.assert_allclose(window, expected_window, rtol=1e-6)
    assert abs(float(np.nanmean(window[:, size]))) < 5  # not BTC's statistics (which would be ~log 100 / std off)
    # fold scalers are per instrument too
    assert isinstance(data.fold_scaler(0), BlockScaler)
    # saved: the first instrument's statistics for old readers, every instrument's by key
    saved = scaler.to_dict()
    assert saved["mean"] == btc.to_dict()["mean"] and set(saved["instruments"]) == set(data.instrument_keys)


def test_the_training_loops_batches_scale_each_window_with_its_instruments_statistics(data):
    """What training sees (the vectorised batches) equals the per-instrument windows, window by window."""
    import torch

    from quantgod_assets.ml.device import make_batches

    ds = data.dataset("test")
    batches = make_batches(ds, batch_size=64, shuffle=False, device=torch.device("cpu"))
    x = torch.cat([xb for xb, _ in batches])
    expected = torch.stack([ds[i][0] for i in range(len(ds))])
    np.testing.assert_allclose(x.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)
    eth = data.instrument_ends(data.split.test, 1)
    assert eth.size and len(ds) > eth.size  # both instruments' windows were compared


def test_changing_an_instruments_test_rows_does_not_change_its_scaler(data):
    features = data.features.copy()
    test_rows = np.zeros(data.arrays.n_rows, dtype=bool)
    test_rows[data.instrument_ends(data.split.test, 1)] = True
    features[test_rows] *= 1000
    rows = rows_covered(data.split.train, SEQ_LEN, data.arrays.n_rows)
    refitted = BlockScaler.fit(features, rows, data.block_starts, data.instrument_keys)
    for a, b in zip(refitted.scalers, data.scaler.scalers):
        np.testing.assert_array_equal(a.mean, b.mean)
        np.testing.assert_array_equal(a.std, b.std)


def test_a_missing_day_names_the_instrument(two_instruments):
    eth = two_instruments.for_instrument("ETHUSDT_linear")
    path = eth.paths.labelled_suffix_dir(eth.labelling.suffix) / f"{DAYS[1].isoformat()}.parquet"
    moved = path.with_suffix(".away")
    path.rename(moved)
    try:
        with pytest.raises(MissingDaysError, match="ETHUSDT_linear"):
            training_ranges(two_instruments, DAYS[0], DAYS[-1])
    finally:
        moved.rename(path)


def test_the_baselines_look_up_persistence_within_the_instrument(data):
    from quantgod_assets.ml.baselines import persistence_baseline

    eth_first = data.instrument_ends(data.windows.ends, 1)[:5]
    # ETH's first windows start its block: the label 60 min earlier is not BTC's row of that minute
    result = persistence_baseline(data.targets, data.split.train, eth_first, data.lookahead, data.keyed_minutes)
    majority = int(np.bincount(data.targets[data.split.train].astype(np.int64), minlength=3).argmax())
    assert (result.predictions == majority).all()


# ---------------------------------------------------------------------------------------------
# The test report per instrument and pooled, the unseen instrument


def _baseline_test_predictions(data):
    from quantgod_assets.ml.baselines import run_baselines

    results = run_baselines(data.features, data.targets, data.split, data.lookahead, data.keyed_minutes,
                            on=("test",), scaler=data.scaler)
    return {name: parts["test"].predictions for name, parts in results.items()}


def test_the_test_report_is_per_instrument_and_pooled(data, two_instruments):
    from quantgod_assets.ml.evaluation import instrument_reports, summarise, test_report

    test = data.split.test
    y_true = data.targets[test].astype(np.int64)
    y_pred = np.random.default_rng(1).integers(0, 3, test.size)
    baselines = _baseline_test_predictions(data)
    evaluation = two_instruments.training.evaluation.model_copy(update={"resamples": 200})
    pooled = test_report(y_true, y_pred, baselines, evaluation, 60)
    pooled.instruments = instrument_reports(data, y_true, y_pred, baselines, evaluation, 60)
    assert set(pooled.instruments) == set(data.instrument_keys)
    assert sum(r.model["n"] for r in pooled.instruments.values()) == pooled.model["n"] == test.size
    for b, key in enumerate(data.instrument_keys):
        on = data.instrument_of(test) == b
        r = pooled.instruments[key]
        assert r.model["f1_macro"] == pytest.approx(summarise(y_true[on], y_pred[on])["f1_macro"])
        assert r.interval.estimate == pytest.approx(r.model["f1_macro"])
        assert set(r.baselines) == {"majority", "stratified", "persistence", "logistic"}
        persistence = summarise(y_true[on], baselines["persistence"][on])["f1_macro"]
        assert r.baselines["persistence"]["f1_macro"] == pytest.approx(persistence)
    metrics = pooled.instrument_metrics()
    for key in data.instrument_keys:
        assert {f"f1_macro_{key}", f"f1_macro_low_{key}", f"f1_macro_high_{key}",
                f"baseline_logistic_f1_macro_{key}"} <= set(metrics)
    # one instrument: no per-instrument report (the pooled one is it)
    one = prepare_data(two_instruments, n_levels=N_LEVELS, seq_len=SEQ_LEN, instruments=["BTCUSDT_linear"])
    assert not instrument_reports(one, y_true[: one.split.test.size], y_true[: one.split.test.size], {},
                                  evaluation, 60)


def test_an_unseen_instrument_is_scored_with_its_own_development_statistics(data, two_instruments):
    from quantgod_assets.ml.data import unseen_data
    from quantgod_assets.ml.evaluation import unseen_reports

    seen = []

    def score(dataset):
        seen.append(dataset)
        y = dataset.targets[dataset.ends].astype(np.int64)
        return {"y_true": y, "y_pred": y}  # a perfect model

    evaluation = two_instruments.training.evaluation.model_copy(update={"resamples": 200})
    reports = unseen_reports(two_instruments, data, score, evaluation, 60)
    assert list(reports) == ["SOLUSDT_linear"]
    report = reports["SOLUSDT_linear"]
    assert report.model["f1_macro"] == pytest.approx(1.0)
    assert set(report.baselines) == {"majority", "stratified", "persistence", "logistic"}
    assert all(report.edges[name].estimate > 0 for name in report.edges)
    unseen = unseen_data(two_instruments, data, "SOLUSDT_linear")
    cut = int(data.test_start.timestamp()) // 60
    assert (unseen.minutes[unseen.test] >= cut).all()
    assert (unseen.minutes[unseen.development] <= cut - data.split.purge - 1).all()
    # the dataset scored is SOL's test windows, scaled with SOL's development rows only
    dataset = seen[0]
    np.testing.assert_array_equal(dataset.ends, unseen.test)
    own = Scaler.fit(unseen.features, rows_covered(unseen.development, SEQ_LEN, unseen.arrays.n_rows))
    np.testing.assert_allclose(dataset.scaler.mean, own.mean)
    size = next(k for k, name in enumerate(unseen.arrays.feature_names) if "sz" in name)
    # sizes 10x BTC's: its own statistics, neither BTC's nor ETH's
    assert abs(own.mean[size] - data.scaler.scalers[0].mean[size] - np.log(10)) < 0.5
    # its test rows never enter its statistics
    test_rows = rows_covered(unseen.test, SEQ_LEN, unseen.arrays.n_rows)
    dev_rows = rows_covered(unseen.development, SEQ_LEN, unseen.arrays.n_rows)
    assert not (test_rows & dev_rows).any()
    from quantgod_assets.ml.evaluation import TestReport

    holder = TestReport(report.model, report.interval, {}, {}, {}, 60, unseen=reports)
    assert {"unseen_SOLUSDT_linear_f1_macro", "unseen_SOLUSDT_linear_baseline_persistence_f1_macro",
            "unseen_SOLUSDT_linear_edge_logistic"} <= set(holder.instrument_metrics())


def test_an_unseen_instrument_without_its_days_is_skipped_and_the_others_scored(data, two_instruments, caplog):
    from quantgod_assets.ml.evaluation import unseen_reports
    from quantgod_assets.settings import Instrument

    # XRPUSDT is configured and named unseen but has no labelled day: the trained model must not be lost
    xrp = Instrument(symbol="XRPUSDT", first_day=DAYS[0])
    training = two_instruments.training.model_copy(update={"unseen_instruments": ("XRPUSDT_linear", "SOLUSDT_linear")})
    settings = two_instruments.model_copy(update={"instruments": (*two_instruments.instruments, xrp),
                                                   "training": training})

    def score(dataset):
        y = dataset.targets[dataset.ends].astype(np.int64)
        return {"y_true": y, "y_pred": y}

    evaluation = settings.training.evaluation.model_copy(update={"resamples": 50})
    with caplog.at_level("WARNING"):
        reports = unseen_reports(settings, data, score, evaluation, 60)
    assert list(reports) == ["SOLUSDT_linear"]
    assert any("Unseen instrument XRPUSDT_linear not scored" in r.getMessage() for r in caplog.records)


def test_predict_scales_with_the_named_instruments_statistics(data, tmp_path):
    from quantgod_assets.ml.predict import Predictor

    saved = data.scaler.to_dict()
    scalers = {key: Scaler.from_dict(d) for key, d in saved["instruments"].items()}
    predictor = Predictor(None, {}, SEQ_LEN, N_LEVELS, Scaler.from_dict(saved), [], ("S", "N", "B"), "v",  # type: ignore[arg-type]
                          tmp_path / "m.pth", scalers)
    assert predictor.instruments == data.instrument_keys
    np.testing.assert_array_equal(predictor.scaler_for("ETHUSDT_linear").mean, data.scaler.scalers[1].mean)
    np.testing.assert_array_equal(predictor.scaler_for("ETHUSDT").mean, data.scaler.scalers[1].mean)
    with pytest.raises(ValueError, match="name the instrument"):
        predictor.scaler_for(None)
    with pytest.raises(ValueError, match="no scaling for instrument 'SOLUSDT'"):
        predictor.scaler_for("SOLUSDT")
    # a one-instrument bundle needs no name
    single = Predictor(None, {}, SEQ_LEN, N_LEVELS, scalers["BTCUSDT_linear"], [], ("S", "N", "B"), "v",  # type: ignore[arg-type]
                       tmp_path / "m.pth")
    assert single.scaler_for(None) is scalers["BTCUSDT_linear"]


def test_the_study_is_named_after_the_training_instruments(two_instruments):
    from quantgod_assets.ml.search import search_provenance, study_name

    ranges = training_ranges(two_instruments)
    assert study_name(two_instruments, ranges).startswith("BTCUSDT_linear+ETHUSDT_linear_")
    assert search_provenance(two_instruments, ranges)["instruments"] == "BTCUSDT_linear+ETHUSDT_linear"


def test_the_pooled_interval_resamples_the_same_minutes_of_every_instrument_together(data):
    from quantgod_assets.ml.final import calendar_order
    from quantgod_assets.ml.uncertainty import metric_interval

    ends = data.split.test
    minutes = data.minutes[ends][calendar_order(data, ends)]
    assert (np.diff(minutes) >= 0).all() and minutes.size == ends.size
    # two instruments that move together are one instrument's evidence, not twice as much: in
    # calendar order with blocks twice as long the interval stays as wide as one's; counted as
    # independent (one after the other, the same blocks) it would shrink by about 1/sqrt(2)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 3000)
    p = np.where(rng.random(3000) < 0.6, y, rng.integers(0, 3, 3000))
    options = {"resamples": 400, "seed": 1}
    one = metric_interval(y, p, block=60, **options)
    pooled = metric_interval(np.repeat(y, 2), np.repeat(p, 2), block=120, **options)
    naive = metric_interval(np.concatenate([y, y]), np.concatenate([p, p]), block=60, **options)

    def width(interval):
        return interval.high - interval.low

    assert width(pooled) > 0.85 * width(one)
    assert width(naive) < 0.85 * width(one)
