"""`quantgod etl | generate | demo`: the command line over the plain modules."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

EXIT_BAD_INPUT = 2


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from exc


def cmd_etl(args: argparse.Namespace) -> int:
    from .orderbook.etl import OrderBookInputError, convert_day
    from .orderbook.replay import ReplayConfig

    config = ReplayConfig(max_silence_s=args.max_silence_s, skip_bad_lines=args.skip_bad_lines)
    try:
        summary = convert_day(args.input, args.output, day=args.date, symbol=args.symbol, config=config)
    except OrderBookInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(summary.line())
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from .orderbook.synthetic import FAULTS, generate_days

    unknown = sorted(set(args.faults) - set(FAULTS))
    if unknown:
        print(f"error: unknown fault(s) {', '.join(unknown)}; choose from {', '.join(FAULTS)}",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    started = time.perf_counter()
    paths = generate_days(
        args.start,
        args.days,
        args.out,
        symbol=args.symbol,
        depth=args.depth,
        rate_ms=args.rate_ms,
        seed=args.seed,
        faults=tuple(args.faults),
        duration_s=args.duration_s,
    )
    for path in paths:
        print(f"{path} ({path.stat().st_size / 1e6:.1f} MB)")
    print(f"generated {len(paths)} day(s) in {time.perf_counter() - started:.1f} s")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(days=args.days, start=args.start, seed=args.seed, duration_s=args.duration_s)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quantgod", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    etl = sub.add_parser("etl", help="convert one day's file to a 1440-row Parquet")
    etl.add_argument("input", type=Path, help=".data.zip, .jsonl.gz or plain JSON lines")
    etl.add_argument("-o", "--output", type=Path, required=True, help="the Parquet file to write")
    etl.add_argument("--date", type=_date, help="the UTC day (default: from the file name)")
    etl.add_argument("--symbol", help="the symbol (default: from the file name)")
    etl.add_argument("--max-silence-s", type=float, default=60.0,
                     help="a sample is invalid when the last message is older than this")
    etl.add_argument("--skip-bad-lines", action="store_true",
                     help="count and skip malformed lines instead of failing the file")
    etl.set_defaults(func=cmd_etl)

    gen = sub.add_parser("generate", help="write synthetic daily archives shaped like Bybit's")
    gen.add_argument("--start", type=_date, required=True)
    gen.add_argument("--days", type=int, default=1)
    gen.add_argument("--out", type=Path, required=True)
    gen.add_argument("--symbol", default="BTCUSDT")
    gen.add_argument("--depth", type=int, choices=(200, 500), default=200)
    gen.add_argument("--rate-ms", type=int, default=100)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--duration-s", type=int, default=None, help="only the first N seconds of each day")
    gen.add_argument("--faults", nargs="*", default=[], metavar="FAULT",
                     help="inject faults: restart, gap, silence, crossed, malformed, truncated")
    gen.set_defaults(func=cmd_generate)

    demo = sub.add_parser("demo", help="generate a few days and run the pipeline end to end")
    demo.add_argument("--days", type=int, default=3)
    demo.add_argument("--start", type=_date, default=dt.date(2025, 3, 10))
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--duration-s", type=int, default=None,
                      help="shorter generated days, for a quick look")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
