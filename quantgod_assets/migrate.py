"""`quantgod migrate`: outputs written before instruments moved to the instrument's folders.

Before instruments the platform knew one linear symbol and wrote
`{data}/L2/pre_processed/{day}.parquet`, `{data}/L2/labelled/{suffix}/{day}.parquet`,
`{data}/models/*`, `{data}/optimization/*` and `{data}/predictions/{version}/`. Each book names its
symbol in its Parquet metadata (`quantgod.symbol`); those files move, unchanged, to
`{data}/L2/linear/{SYMBOL}/...`, the model and search files to `{data}/models/{SYMBOL}_linear/` and
`{data}/optimization/{SYMBOL}_linear/`, the predictions to `{data}/predictions/{SYMBOL}_linear/`. Nothing
is reprocessed and nothing is overwritten: a file whose new place is taken stays where it is and
is named. Running it twice moves nothing the second time.

This module does not import dagster.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .settings import CATEGORIES, ConfigError, Instrument, Settings

__all__ = ["Migration", "legacy_symbol", "migrate_legacy_layout"]


@dataclass
class Migration:
    moved: list[tuple[Path, Path]] = field(default_factory=list)
    kept: list[tuple[Path, str]] = field(default_factory=list)  # (file, why it stayed)


def legacy_symbol(books: Iterable[Path], default: str) -> str:
    """The symbol the old books name in their metadata (the first readable one), else `default`."""
    import pyarrow.parquet as pq

    for path in books:
        try:
            meta = pq.read_schema(path).metadata or {}
        except (OSError, ValueError):
            continue
        symbol = meta.get(b"quantgod.symbol")
        if symbol:
            return symbol.decode()
    return default


def _move(source: Path, target: Path, report: Migration) -> None:
    if target.exists():
        report.kept.append((source, f"{target} exists"))
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(source), str(target))  # a rename on one filesystem, a copy and delete across two
    report.moved.append((source, target))


def _move_tree(source: Path, target: Path, report: Migration, skip: Iterable[str] = ()) -> None:
    """Every file under `source` to the same relative place under `target`."""
    if not source.is_dir():
        return
    skipped = set(skip)
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if path.is_file() and relative.parts[0] not in skipped:
            _move(path, target / relative, report)


def _is_instrument_folder(name: str) -> bool:
    return any(name.endswith(f"_{category}") for category in CATEGORIES) or "+" in name


def migrate_legacy_layout(settings: Settings) -> tuple[Instrument, Migration]:
    """Moves the one-symbol layout's files under `settings.paths.data_dir` to their instrument's."""
    paths = settings.paths
    books = sorted(paths.legacy_preprocessed_dir.glob("*.parquet")) if paths.legacy_preprocessed_dir.is_dir() else []
    symbol = legacy_symbol(books, settings.instruments[0].symbol)
    try:
        instrument = Instrument(symbol=symbol, category="linear")
    except ValueError:  # pydantic's ValidationError: a symbol that could change a path
        raise ConfigError(f"{paths.legacy_preprocessed_dir}: the books name symbol {symbol!r}, which does not match "
                          "^[A-Z0-9]{2,30}$: move them by hand") from None
    target = paths.for_instrument(instrument, instrument.key)
    report = Migration()
    _move_tree(paths.legacy_preprocessed_dir, target.preprocessed_dir, report)
    _move_tree(paths.legacy_labelled_dir, target.labelled_dir, report)
    data = paths.data_dir
    for folder, new in ((data / "models", target.models_dir), (data / "optimization", target.optimization_dir)):
        if folder.is_dir():
            for path in sorted(p for p in folder.iterdir() if p.is_file()):
                _move(path, new / path.name, report)
    predictions = data / "predictions"
    if predictions.is_dir():
        for version in sorted(p for p in predictions.iterdir() if p.is_dir() and not _is_instrument_folder(p.name)):
            _move_tree(version, predictions / instrument.key / version.name, report)
    for folder in (paths.legacy_preprocessed_dir, paths.legacy_labelled_dir, *(
            p for p in (predictions.iterdir() if predictions.is_dir() else ()) if not _is_instrument_folder(p.name))):
        _remove_empty(folder)
    return instrument, report


def _remove_empty(folder: Path) -> None:
    if not folder.is_dir():
        return
    for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    if not any(folder.iterdir()):
        folder.rmdir()
