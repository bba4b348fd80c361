"""`quantgod etl | generate | demo | plots | predict`: the command line over the plain modules.

An expected failure (bad or missing input, an encrypted ZIP, a full disk, an output that would
replace the input or is a folder, bad settings) prints one line, `error: <file>: <what
is wrong>`, on stderr and exits 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import datetime as dt
import errno
import math
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .settings import Settings

EXIT_BAD_INPUT = 2
DISK_FULL = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})
# OSErrors that say something about the user's files, disks or mounts, not about this program
EXPECTED_ERRNOS = DISK_FULL | {
    errno.ENOENT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EISDIR, errno.ENOTDIR,
    errno.EEXIST, errno.ENAMETOOLONG, errno.ELOOP, errno.EIO,
}


class CliError(Exception):
    """An expected failure; its message (one line per problem) names the file and what is wrong."""


def os_error_line(exc: OSError, target: Path | None = None) -> str:
    """`<file>: <what is wrong>` for an expected OSError; `target` is the file (or folder) being
    written, named when the error names no file or names the temp file beside it (`.{name}.*.tmp`)."""
    name = exc.filename
    if target is not None and (name is None or _is_temp_of(Path(name), target)):
        name = target
    if exc.errno in DISK_FULL:
        what = f"cannot write: the disk is full or a file size limit is reached ({os.strerror(exc.errno)})"
    else:
        what = exc.strerror or str(exc)
    return f"{name}: {what}" if name is not None else what


def _is_temp_of(path: Path, target: Path) -> bool:
    return path.parent == target.parent and path.name.startswith(f".{target.name}.") and path.suffix == ".tmp"


@contextmanager
def writing(target: Path | None) -> Iterator[None]:
    """Expected OSErrors raised in the block (a full disk, a read-only or missing folder) as a
    CliError naming `target`, the file or folder being written."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in EXPECTED_ERRNOS:
            raise
        raise CliError(os_error_line(exc, target)) from exc


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from exc


def cmd_etl(args: argparse.Namespace) -> int:
    from .orderbook.etl import convert_day
    from .orderbook.replay import ReplayConfig

    # convert_day refuses, before any work, an input that is no file and an -o that is the input,
    # a folder or a device (etl.check_paths); a full disk while writing names the -o file
    config = ReplayConfig(max_silence_s=args.max_silence_s, skip_bad_lines=args.skip_bad_lines,
                          max_line_bytes=args.max_line_bytes)
    with writing(args.output):
        summary = convert_day(args.input, args.output, day=args.date, symbol=args.symbol, config=config)
    print(summary.line())
    return 0


def _folder_to_write(path: Path, flag: str) -> None:
    """Refuses an output folder that is an existing file (or lies under one), before any work."""
    if path.exists() and not path.is_dir():
        raise CliError(f"{path}: is not a folder; {flag} names the folder to write into")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise CliError(f"{path}: {parent} is not a folder")
            break


def _at_least(value: int | None, least: int, flag: str) -> None:
    if value is not None and value < least:
        raise CliError(f"{flag} must be at least {least}, got {value}")


def cmd_generate(args: argparse.Namespace) -> int:
    from .orderbook.synthetic import FAULTS

    unknown = sorted(set(args.faults) - set(FAULTS))
    if unknown:
        raise CliError(f"unknown fault(s) {', '.join(unknown)}; choose from {', '.join(FAULTS)}")
    _at_least(args.days, 1, "--days")
    _at_least(args.rate_ms, 1, "--rate-ms")
    _at_least(args.duration_s, 1, "--duration-s")
    if not (math.isfinite(args.signal) and args.signal >= 0):  # argparse's float takes "nan" and "-1"
        raise CliError(f"--signal must be a number >= 0, got {args.signal}")
    from .orderbook.synthetic import instrument

    try:
        instrument(args.symbol, args.category)
    except ValueError as exc:  # a symbol that cannot name a file or folder
        raise CliError(f"--symbol: {exc}") from exc
    _folder_to_write(args.out, "--out")
    from .orderbook.synthetic import generate_days
    from .progress import Progress

    started = time.perf_counter()
    with writing(args.out), Progress(args.days, "generate") as progress:
        paths = generate_days(
            args.start, args.days, args.out, symbol=args.symbol, depth=args.depth,
            rate_ms=args.rate_ms, seed=args.seed, faults=tuple(args.faults), duration_s=args.duration_s,
            signal=args.signal, category=args.category,
            on_day=lambda path: progress.update(note=f"{path.name} ({path.stat().st_size / 1e6:.1f} MB)"),
        )
    for path in paths:
        print(f"{path} ({path.stat().st_size / 1e6:.1f} MB)")
    print(f"generated {len(paths)} day(s) in {time.perf_counter() - started:.1f} s")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo
    from .settings import load_settings

    _at_least(args.days, 1, "--days")
    _at_least(args.duration_s, 1, "--duration-s")
    root = load_settings().paths.raw_root  # bad settings fail here, before any work
    _folder_to_write(root, "QUANTGOD_RAW_ROOT")
    with writing(root):  # the generated days; the Dagster runs report their own failures
        return run_demo(days=args.days, start=args.start, seed=args.seed, duration_s=args.duration_s)


def cmd_plots(args: argparse.Namespace) -> int:
    from .debug_plots import debug_plots
    from .settings import load_settings

    start = args.start or args.date
    end = args.end or (args.date if args.date else start)
    if start is None:
        raise CliError("give a day: --date D, or a range: --from D1 --to D2")
    if args.date and (args.start or args.end):
        raise CliError("--date is one day: give either --date D or --from D1 --to D2")
    if end < start:
        raise CliError(f"--to {end} is before --from {start}")
    settings = load_settings()
    if args.instrument:
        settings = settings.for_instrument(args.instrument)
    out = args.out or settings.paths.logs_dir / "debug_plots"
    _folder_to_write(out, "--out")
    try:
        with writing(out):
            written = debug_plots(settings, start, end, out, args.levels)
    except ValueError as exc:  # a day that cannot be pictured (e.g. more levels than it holds)
        raise CliError(str(exc)) from exc
    for path, note in written:
        print(f"{path}" + (f" ({note})" if note else ""))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import polars as pl

    from .ml.predict import BundleError, Predictor, missing_columns, predict
    from .settings import load_settings
    from .storage import write_parquet_atomic

    _at_least(args.history_days, 0, "--history-days")
    settings = load_settings()
    if args.instrument:
        settings = settings.for_instrument(args.instrument)
    sources = _prediction_days(settings, args.date, args.history_days)  # the day's file checked first
    try:
        predictor = Predictor.load(args.model)
    except FileNotFoundError as exc:
        raise CliError(f"{args.model}: no such model file") from exc
    except BundleError as exc:
        raise CliError(str(exc)) from exc
    frames = []
    for source in sources:
        try:
            frame = pl.read_parquet(source)
        except pl.exceptions.PolarsError as exc:  # not Parquet, or a damaged file
            raise CliError(f"{source}: unreadable Parquet ({str(exc).splitlines()[0]})") from exc
        lacking = missing_columns(frame, predictor.n_levels)
        if lacking:
            raise CliError(f"{source}: lacks {len(lacking)} column(s) the model reads: {', '.join(lacking)}")
        frames.append(frame.sort("ts"))
    try:
        # a model trained on several instruments scales the day with this instrument's statistics
        instrument = settings.instrument.key if len(predictor.instruments) > 1 else None
        table = predict(predictor, frames, instrument=instrument)
    except ValueError as exc:  # e.g. a file whose minutes are out of time order
        raise CliError(f"{sources[-1]}: {exc}") from exc
    day_rows = table.tail(frames[-1].height)  # the earlier days were history only
    out = args.out or settings.paths.predictions_path(predictor.version, args.date)
    with writing(out):
        write_parquet_atomic(day_rows, out, {"quantgod.model_version": predictor.version,
                                             "quantgod.model_path": str(predictor.path),
                                             "quantgod.day": args.date.isoformat()})
    print(_prediction_line(args.date, day_rows.get_column("predicted_label").to_list(), predictor.class_names, out))
    return 0


def _prediction_days(settings: Settings, day: dt.date, history_days: int) -> list[Path]:
    """The preprocessed files to read, oldest first: the day's (which must exist) after the
    present ones of the `history_days` before it (their minutes give the day's first windows)."""
    source = settings.paths.preprocessed_path(day)
    if not source.is_file():
        raise CliError(f"{source}: {day} is not preprocessed (run `quantgod etl` on its archive or "
                       f"materialize preprocessed_book for {day})")
    history = [settings.paths.preprocessed_path(day - dt.timedelta(days=k)) for k in range(history_days, 0, -1)]
    return [path for path in history if path.is_file()] + [source]


def _prediction_line(day: dt.date, labels: list[str | None], class_names: tuple[str, ...], out: Path) -> str:
    """`{day}: N rows, M minutes with a prediction (SELL a, NEUTRAL b, BUY c) -> {out}`."""
    predicted = [label for label in labels if label is not None]
    classes = ", ".join(f"{name} {predicted.count(name)}" for name in class_names)
    return f"{day}: {len(labels)} rows, {len(predicted)} minutes with a prediction ({classes}) -> {out}"


def build_parser() -> argparse.ArgumentParser:
    from .settings import EtlSettings  # the defaults' one home (etl.yaml's schema)

    parser = argparse.ArgumentParser(prog="quantgod", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    etl = sub.add_parser("etl", help="convert one day's file to a 1440-row Parquet")
    etl.add_argument("input", type=Path, help=".data.zip, .jsonl.gz or plain JSON lines (required)")
    etl.add_argument("-o", "--output", type=Path, required=True, help="the Parquet file to write (required)")
    etl.add_argument("--date", type=_date, help="the UTC day (default: from the file name)")
    etl.add_argument("--symbol", help="the symbol (default: from the file name)")
    etl.add_argument("--max-silence-s", type=float, default=EtlSettings().max_silence_s,
                     help="a sample is invalid when the last message is older than this many seconds "
                          "(default: %(default)s)")
    etl.add_argument("--skip-bad-lines", action="store_true",
                     help="count and skip malformed lines instead of failing the file (default: off)")
    etl.add_argument("--max-line-bytes", type=int, default=EtlSettings().max_line_bytes,
                     help="a longer line is a bad line (default 64 MB; real lines are 1-25 KB)")
    etl.set_defaults(func=cmd_etl)

    # every generate / demo option says its default: %(default)s is the value argparse holds
    gen = sub.add_parser("generate", help="write synthetic daily archives shaped like Bybit's")
    gen.add_argument("--start", type=_date, required=True, help="the first UTC day, YYYY-MM-DD (required)")
    gen.add_argument("--days", type=int, default=1, help="consecutive days to write (default: %(default)s)")
    gen.add_argument("--out", type=Path, required=True,
                     help="the folder to write into, as {out}/{YYYY}/{day}_{SYMBOL}_ob{depth}.data.zip (linear) "
                          "or {out}/{category}/{SYMBOL}/{YYYY}/... (spot, inverse) (required)")
    gen.add_argument("--symbol", default="BTCUSDT",
                     help="the symbol in the names and lines; its base sets the price scale and tick: BTC ~84,000 "
                          "tick 0.10, ETH ~2,000 tick 0.01, SOL ~150 tick 0.01, any other a scale from its name "
                          "(default: %(default)s)")
    gen.add_argument("--category", choices=("linear", "spot", "inverse"), default="linear",
                     help="Bybit's market: linear writes fixed decimals (\"2001.50\"), spot drops trailing zeros "
                          "(\"2001.5\"); spot and inverse days go under {out}/{category}/{SYMBOL}/ "
                          "(default: %(default)s)")
    gen.add_argument("--depth", type=int, choices=(200, 500), default=None,
                     help="book levels a side, as Bybit's ob200 / ob500 files (default: the category's "
                          "archive, 200; 500 for inverse)")
    gen.add_argument("--rate-ms", type=int, default=100,
                     help="milliseconds between deltas; 1000 writes small, quick days (default: %(default)s)")
    gen.add_argument("--seed", type=int, default=0,
                     help="the same seed writes the same bytes (default: %(default)s)")
    gen.add_argument("--duration-s", type=int, default=None,
                     help="only the first N seconds of each day (default: the whole day)")
    gen.add_argument("--signal", type=float, default=1.0, metavar="FLOAT",
                     help="strength of the planted signal: 1 the normal market, where the book's imbalance "
                          "leads the next hour's return; 0 NULL data with no directional information (no "
                          "drift regimes, no skew link); 0.5 halves both (default: %(default)s)")
    gen.add_argument("--faults", nargs="*", default=[], metavar="FAULT",
                     help="inject faults: restart, gap, silence, crossed, malformed, truncated, "
                          "early_deltas, boundary, narrow_restart, one_sided_cross (see orderbook/synthetic.py) "
                          "(default: none)")
    gen.set_defaults(func=cmd_generate)

    demo = sub.add_parser("demo", help="generate a few days and run the pipeline end to end through Dagster "
                                        "(under a minute on two cores)")
    demo.add_argument("--days", type=int, default=3, help="days to generate and process (default: %(default)s)")
    demo.add_argument("--start", type=_date, default=dt.date(2025, 3, 10),
                      help="the first UTC day, YYYY-MM-DD (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=7, help="the generator's seed (default: %(default)s)")
    demo.add_argument("--duration-s", type=int, default=None,
                      help="shorter generated days, for a quick look (default: the whole day)")
    demo.set_defaults(func=cmd_demo)

    plot = sub.add_parser("plots", help="write the diagnostic pictures (PNG) of a day or a range of days, and of "
                                        "the trained model, to logs/debug_plots/")
    plot.add_argument("--date", type=_date, default=None,
                      help="one preprocessed day, YYYY-MM-DD (default: none; or give --from / --to)")
    plot.add_argument("--from", dest="start", type=_date, default=None,
                      help="the first day of a range, YYYY-MM-DD (default: none)")
    plot.add_argument("--to", dest="end", type=_date, default=None,
                      help="the last day of a range, YYYY-MM-DD; the preprocessed days in it are drawn "
                           "(default: the --from day)")
    plot.add_argument("--out", type=Path, default=None,
                      help="the folder to write to (default: {logs_dir}/debug_plots)")
    plot.add_argument("--instrument", default=None,
                      help="the configured instrument to picture, e.g. ETHUSDT_linear or ETHUSDT (default: the first "
                      "of etl.yaml instruments; with several, file names start with the instrument)")
    plot.add_argument("--levels", type=int, default=None,
                      help="book levels for the features (default: training.yaml n_levels)")
    plot.set_defaults(func=cmd_plots)

    pred = sub.add_parser("predict", help="a saved model's per-minute probabilities on one preprocessed day")
    pred.add_argument("--model", type=Path, required=True, help="the .pth model bundle (required)")
    pred.add_argument("--date", type=_date, required=True, help="the preprocessed day, YYYY-MM-DD (required)")
    pred.add_argument("--history-days", type=int, default=1,
                      help="days before it read for the first minutes' windows, when present (default: %(default)s)")
    pred.add_argument("--out", type=Path, default=None,
                      help="the Parquet file to write (default: {data_dir}/predictions/{instrument}/{model version}/"
                      "{date}.parquet)")
    pred.add_argument("--instrument", default=None,
                      help="the configured instrument whose day it is, e.g. ETHUSDT_linear or ETHUSDT "
                      "(default: the first of etl.yaml instruments)")
    pred.set_defaults(func=cmd_predict)

    migrate = sub.add_parser("migrate", help="move outputs written before instruments ({data_dir}/L2/pre_processed, "
                             "labelled, models, optimization, predictions) to their instrument's folders; "
                             "nothing is reprocessed or overwritten")
    migrate.set_defaults(func=cmd_migrate)
    return parser


def cmd_migrate(args: argparse.Namespace) -> int:
    from .migrate import migrate_legacy_layout
    from .settings import load_settings

    settings = load_settings()
    instrument, report = migrate_legacy_layout(settings)
    for source, target in report.moved:
        print(f"{source} -> {target}")
    print(f"{instrument.key}: moved {len(report.moved)} file(s)")
    if report.kept:  # both copies kept: which one is right is the user's call, never ours
        first, why = report.kept[0]
        raise CliError(f"{first}: not moved, {why} ({len(report.kept)} file(s) like it): compare the two, delete "
                       "the one not wanted, run `quantgod migrate` again")
    return 0


def _expected_failure(exc: BaseException) -> str | None:
    """The message of an expected failure (see the module docstring); None for a bug."""
    from .debug_plots import DayNotPreprocessedError
    from .orderbook.reader import OrderBookInputError
    from .settings import ConfigError

    if isinstance(exc, (CliError, OrderBookInputError, ConfigError, DayNotPreprocessedError)):
        return str(exc)
    if isinstance(exc, OSError) and exc.errno in EXPECTED_ERRNOS:
        return os_error_line(exc)
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as exc:
        message = _expected_failure(exc)
        if message is None:
            raise
        # one line, however many the message has (settings list one problem a line)
        one_line = "; ".join(part.strip() for part in message.splitlines() if part.strip())
        print(f"error: {one_line or type(exc).__name__}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
