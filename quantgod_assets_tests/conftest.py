"""Shared fixtures for the platform tests: short generated days and a QuantGod environment in temp folders."""

from __future__ import annotations

import datetime as dt
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHORT_DAY_S = 600  # ten minutes of messages: the rest of the day is a gap (fast, and a known gap share)
DAY1, DAY2, BAD_DAY = dt.date(2025, 3, 14), dt.date(2025, 3, 15), dt.date(2025, 3, 16)


@dataclass
class QuantGodEnv:
    root: Path
    raw_root: Path
    data_dir: Path
    logs_dir: Path
    config_dir: Path
    dagster_home: Path

    def env(self) -> dict[str, str]:
        return {
            "QUANTGOD_RAW_ROOT": str(self.raw_root),
            "QUANTGOD_DATA_DIR": str(self.data_dir),
            "QUANTGOD_LOGS_DIR": str(self.logs_dir),
            "QUANTGOD_CONFIG_DIR": str(self.config_dir),
            "QUANTGOD_SYMBOL": "BTCUSDT",
            "DAGSTER_HOME": str(self.dagster_home),
        }

    def set_etl(self, **changes: object) -> None:
        """Rewrites the temp etl.yaml with `key: value` lines changed (top-level or under checks:)."""
        import yaml

        path = self.config_dir / "etl.yaml"
        data = yaml.safe_load(path.read_text())
        for key, value in changes.items():
            if key in ("gap_warn_share", "gap_fail_share"):
                data.setdefault("checks", {})[key] = value
            elif key.startswith("download_"):
                data.setdefault("download", {})[key.removeprefix("download_")] = value
            else:
                data[key] = value
        path.write_text(yaml.safe_dump(data))

    def preprocessed(self, day: dt.date) -> Path:
        return self.data_dir / "L2" / "pre_processed" / f"{day.isoformat()}.parquet"


@pytest.fixture(scope="session")
def short_archives(tmp_path_factory) -> dict[dt.date, Path]:
    """Two good short days and one truncated (corrupt ZIP) day, generated once per session."""
    from quantgod_assets.orderbook.synthetic import generate_days

    out = tmp_path_factory.mktemp("archives")
    good = generate_days(DAY1, 2, out / "good", seed=3, duration_s=SHORT_DAY_S)
    bad = generate_days(BAD_DAY, 1, out / "bad", seed=4, duration_s=SHORT_DAY_S, faults=("truncated",))
    return {DAY1: good[0], DAY2: good[1], BAD_DAY: bad[0]}


def make_env(base: Path, archives: dict[dt.date, Path], *, lenient_gaps: bool = True) -> QuantGodEnv:
    env = QuantGodEnv(
        root=base,
        raw_root=base / "mnt" / "bybit",
        data_dir=base / "data",
        logs_dir=base / "logs",
        config_dir=base / "configs",
        dagster_home=base / "dagster_home",
    )
    for day, path in archives.items():
        target = env.raw_root / f"{day.year}" / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    shutil.copytree(REPO / "configs", env.config_dir)
    env.dagster_home.mkdir()
    shutil.copyfile(REPO / "configs" / "dagster.yaml", env.dagster_home / "dagster.yaml")
    if lenient_gaps:
        # a short generated day is ~99 % gap: let it pass so the other behaviour can be seen
        env.set_etl(gap_warn_share=0.995, gap_fail_share=1.0)
    return env


@pytest.fixture
def qg_env(tmp_path, short_archives, monkeypatch) -> QuantGodEnv:
    """QUANTGOD_* variables pointing at temp folders holding the short archives (gap limits relaxed)."""
    env = make_env(tmp_path, short_archives)
    for key, value in env.env().items():
        monkeypatch.setenv(key, value)
    return env
