"""A corrupt archive on disk during the book stage (`daily.book.produce_day`): the other depth
when it is there, else moved to `{root}/corrupt/` and fetched again (downloads on), else the
corruption is the day's reason (downloads off, the file left where the user keeps it)."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import pytest

from quantgod_assets.daily.book import produce_day
from quantgod_assets.settings import load_settings

from .builders import ArchiveServer, QuantGodEnv, flip_member_bytes, make_env

DAY = dt.date(2025, 3, 14)
NAME200, NAME500 = (f"2025-03-14_BTCUSDT_ob{d}.data.zip" for d in (200, 500))


@pytest.fixture(scope="module")
def tiny_archives(tmp_path_factory) -> dict[int, Path]:
    """The same 30 s of market at depth 200 and 500."""
    from quantgod_assets.orderbook.synthetic import generate_days

    out = tmp_path_factory.mktemp("tiny")
    return {depth: generate_days(DAY, 1, out / str(depth), seed=7, depth=depth, duration_s=30)[0]
            for depth in (200, 500)}


@pytest.fixture
def env(tmp_path, monkeypatch) -> QuantGodEnv:
    qg = make_env(tmp_path, {})
    for key, value in qg.env().items():
        monkeypatch.setenv(key, value)
    (qg.raw_root / "2025").mkdir(parents=True)
    return qg


def _place(env: QuantGodEnv, source: Path, *, corrupt: bool = False) -> Path:
    target = env.raw_root / "2025" / source.name
    data = source.read_bytes()
    target.write_bytes(flip_member_bytes(data) if corrupt else data)
    return target


def _lines(outcome, level: int) -> list[str]:
    return [line for lv, line in outcome.lines if lv == level]


@pytest.mark.parametrize("download", [False, True])
def test_a_corrupt_ob200_beside_a_good_ob500_converts_from_ob500(env, tiny_archives, download):
    if download:  # downloads on: the other depth on disk still comes first (no request is made)
        env.set_etl(download_enabled=True, download_base_url="http://127.0.0.1:9/unused")
    bad = _place(env, tiny_archives[200], corrupt=True)
    good = _place(env, tiny_archives[500])
    outcome = produce_day(DAY, load_settings(), plot=False)
    assert outcome.reason is None and outcome.published
    assert outcome.metadata["source_depth"] == 500 and outcome.metadata["archive"] == str(good)
    warnings = _lines(outcome, logging.WARNING)
    assert any(f"Corrupt archive: {bad}" in w for w in warnings)
    assert any(w.startswith(f"Fallback: converting {DAY} from {NAME500} (ob500)") and NAME200 in w
               for w in warnings)
    moved = env.raw_root / "corrupt" / f"{NAME200}.corrupt"
    if download:  # moved aside, kept for a look
        assert not bad.exists() and moved.read_bytes() == flip_member_bytes(tiny_archives[200].read_bytes())
    else:  # downloads off: the user's file stays where it is
        assert bad.is_file() and not moved.exists()


def test_a_corrupt_file_on_disk_is_moved_aside_and_fetched_again(env, tiny_archives):
    bad = _place(env, tiny_archives[200], corrupt=True)
    with ArchiveServer.running() as server:
        url_path = f"/orderbook/linear/BTCUSDT/{NAME200}"
        server.files[url_path] = tiny_archives[200].read_bytes()
        env.set_etl(download_enabled=True, download_base_url=server.base_url)
        outcome = produce_day(DAY, load_settings(), plot=False)
    assert outcome.reason is None and outcome.published
    assert server.requests == [url_path]
    assert bad.read_bytes() == tiny_archives[200].read_bytes()  # the fresh copy under the archive name
    moved = env.raw_root / "corrupt" / f"{NAME200}.corrupt"
    assert moved.read_bytes() == flip_member_bytes(tiny_archives[200].read_bytes())
    assert outcome.metadata["source_depth"] == 200 and outcome.metadata["downloaded_from"].endswith(NAME200)
    assert any(f"moved to {moved}" in w for w in _lines(outcome, logging.WARNING))
    # the next run finds the good copy: nothing moved, nothing fetched
    again = produce_day(DAY, load_settings(), plot=False)
    assert again.reason is None and "downloaded_from" not in again.metadata
    assert sorted(p.name for p in (env.raw_root / "corrupt").iterdir()) == [moved.name]


def test_a_corrupt_file_with_downloads_off_is_the_days_reason(env, tiny_archives):
    bad = _place(env, tiny_archives[200], corrupt=True)
    outcome = produce_day(DAY, load_settings(), plot=False)
    assert outcome.reason is not None and str(bad) in outcome.reason
    assert "corrupt" in outcome.reason.lower() and not outcome.published
    assert bad.is_file() and not (env.raw_root / "corrupt").exists()


def test_a_truncated_file_whose_fresh_copy_is_missing_says_both(env, tiny_archives):
    data = tiny_archives[200].read_bytes()
    bad = env.raw_root / "2025" / NAME200
    bad.write_bytes(data[: len(data) // 2])
    with ArchiveServer.running() as server:  # the server has neither depth
        env.set_etl(download_enabled=True, download_base_url=server.base_url)
        outcome = produce_day(DAY, load_settings(), plot=False)
    assert outcome.reason is not None
    assert "corrupt or truncated" in outcome.reason and "not in the public archive" in outcome.reason
    assert not bad.exists() and (env.raw_root / "corrupt" / f"{NAME200}.corrupt").is_file()


def test_bad_content_in_a_sound_archive_is_not_moved(env):
    """A file whose ZIP is sound but whose lines are not Bybit messages fails as before: it is
    not corrupt, so it is neither moved nor replaced."""
    import zipfile

    path = env.raw_root / "2025" / NAME200
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(NAME200[: -len(".zip")], b'{"topic":"orderbook.200.BTCUSDT","ts":12x}\n')
    with ArchiveServer.running() as server:
        env.set_etl(download_enabled=True, download_base_url=server.base_url)
        outcome = produce_day(DAY, load_settings(), plot=False)
    assert outcome.reason is not None and server.requests == []
    assert path.is_file() and not (env.raw_root / "corrupt").exists()
