"""Where a day's time goes: each stage of the engine alone, in one thread, on one generated day.

  inflate   the reader (ISA-L) to the end, beside zipfile's read (zlib) of the same member, and
            the whole threaded replay reading fresh bytes per chunk beside reused buffers
            (wall and CPU time, page faults)
  parse     `parse_batch` over the day's bytes already in memory: ns per byte
  replay    `apply_batch` over the parsed batches: ns per price level applied
  finish    the 1440-row frame and its Parquet file, with and without dictionary pages

The engine overlaps the three on two cores, so its wall time (etl_bench.py) sits near half their
sum. Use this to see which stage a change moves; ratios within one run are what count.

    python benchmarks/stages_bench.py                  # first 400 MB of a full ob200 day
    python benchmarks/stages_bench.py --mb 100 --depth 500
"""

from __future__ import annotations

import argparse
import datetime as dt
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from etl_bench import read_to_end, zipfile_read_to_end  # benchmarks/ is on sys.path when run

from quantgod_assets.orderbook import _kernel as k
from quantgod_assets.orderbook import replay as r
from quantgod_assets.orderbook.etl import parquet_metadata
from quantgod_assets.orderbook.reader import iter_chunks, prefetched
from quantgod_assets.orderbook.sampling import minute_frame
from quantgod_assets.orderbook.synthetic import generate_day
from quantgod_assets.storage import write_parquet_atomic

DAY = dt.date(2025, 3, 14)
PIECE = 4 << 20


def timed(fn):
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def line_pieces(data: bytes, limit: int) -> list[np.ndarray]:
    """The first `limit` bytes as ~4 MB pieces that each end at a line end."""
    pieces, start = [], 0
    while start < min(len(data), limit):
        stop = data.rfind(b"\n", start, start + PIECE) + 1
        if stop <= start:
            break
        pieces.append(np.frombuffer(data, dtype=np.uint8, count=stop - start, offset=start))
        start = stop
    return pieces


def parse_all(pieces: list[np.ndarray], path: Path) -> list[r._Batch]:
    """Every piece into batches (fresh ones, all kept for the replay)."""
    parser = r._Parser(r.ReplayConfig(), str(path))
    batches = []
    for buf in pieces:
        offset = 0
        while True:
            batch = r._Batch()
            offset, stop = parser._parse(buf, offset, buf.shape[0], False, batch)
            if stop == k.STOP_ERROR:
                raise parser._error()
            batches.append(batch)
            if stop != k.STOP_FULL:
                break
    return batches


def parse_only(pieces: list[np.ndarray], path: Path) -> int:
    """The parse alone: one reused batch, so memory traffic is the parser's own."""
    parser = r._Parser(r.ReplayConfig(), str(path))
    batch = r._Batch()
    messages = 0
    for buf in pieces:
        offset = 0
        while True:
            batch.header[:] = 0
            offset, stop = parser._parse(buf, offset, buf.shape[0], False, batch)
            messages += int(batch.header[k.B_MESSAGES])
            if stop != k.STOP_FULL:
                break
    return messages


def pipeline_cost(fn) -> tuple[float, float, int]:
    """Best of three calls: (seconds, CPU seconds, minor page faults) of the best."""
    runs = []
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_SELF)
        seconds, _ = timed(fn)
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
        runs.append((seconds, cpu, after.ru_minflt - before.ru_minflt))
    return min(runs)


def finish(path: Path, folder: Path) -> dict[str, float]:
    """The day's frame and Parquet write (as convert_day does), and the write with dictionary pages."""
    day = r.replay_file(path, DAY)
    frame_s, frame = min(timed(lambda: minute_frame(day)) for _ in range(3))
    out = folder / "day.parquet"
    meta = parquet_metadata(day, "BTCUSDT", path)
    write_s = min(timed(lambda: write_parquet_atomic(frame, out, meta))[0] for _ in range(3))
    size = out.stat().st_size
    table = frame.to_arrow()
    dict_s = min(timed(lambda: pq.write_table(table, out, compression="zstd"))[0] for _ in range(3))
    return {"frame_s": frame_s, "write_s": write_s, "size": size, "dict_s": dict_s, "dict_size": out.stat().st_size}


def replay_only(batches: list[r._Batch]) -> None:
    replayer = r._Replayer(DAY, r.ReplayConfig())
    for batch in batches:
        replayer.apply(batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, choices=(200, 500), default=200)
    parser.add_argument("--mb", type=int, default=400, help="how much of the day to parse and replay")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="quantgod-stages-") as tmp:
        path = generate_day(DAY, Path(tmp), depth=args.depth, seed=args.depth)
        stdlib_s, total = zipfile_read_to_end(path)
        inflate_s, inflated = read_to_end(path)
        assert inflated == total
        fresh = pipeline_cost(lambda: r.replay_stream(prefetched(iter_chunks(path)), DAY))
        pooled = pipeline_cost(lambda: r.replay_file(path, DAY))
        done = finish(path, Path(tmp))
        data = b"".join(iter_chunks(path))  # untimed: held in memory for the parse
        pieces = line_pieces(data, args.mb << 20)
        n_bytes = sum(piece.shape[0] for piece in pieces)
        parse_only(pieces[:1], path)  # loads (or compiles) the kernel outside the timings
        replay_only(parse_all(pieces[:1], path))
        parse_s, messages = min(timed(lambda: parse_only(pieces, path)) for _ in range(2))
        batches = parse_all(pieces, path)
        levels = sum(int(b.header[k.B_LEVELS] + b.header[k.B_LEVELS + 1]) for b in batches)
        replay_s = min(timed(lambda: replay_only(batches))[0] for _ in range(2))
    mb = total / 1e6
    print(f"ob{args.depth} day: {mb:.0f} MB unzipped; parse and replay over the first "
          f"{n_bytes / 1e6:.0f} MB ({messages:,} messages, {levels:,} levels)")
    print(f"inflate  zipfile {stdlib_s:6.2f} s ({mb / stdlib_s:5.0f} MB/s)   engine's reader "
          f"{inflate_s:6.2f} s ({mb / inflate_s:5.0f} MB/s)   ratio {stdlib_s / inflate_s:.2f}")
    print("         the whole replay, bytes per chunk {:.2f} s ({:.2f} s CPU, {:,} page faults), reused "
          "buffers {:.2f} s ({:.2f} s CPU, {:,} page faults)".format(*fresh, *pooled))
    print(f"parse    {parse_s * 1e9 / n_bytes:5.2f} ns/byte ({n_bytes / 1e6 / parse_s:5.0f} MB/s)")
    print(f"replay   {replay_s * 1e9 / levels:5.1f} ns/level ({levels / replay_s / 1e6:5.1f} M levels/s)")
    print(f"finish   frame {done['frame_s']:.3f} s, Parquet {done['write_s']:.3f} s ({done['size'] / 1e6:.2f} MB); "
          f"with dictionary pages {done['dict_s']:.3f} s ({done['dict_size'] / 1e6:.2f} MB)")
    day_levels = levels * total / n_bytes
    stages = {"inflate": inflate_s, "parse": parse_s * total / n_bytes, "replay": replay_s * day_levels / levels}
    print("whole day, one core each: " + ", ".join(f"{name} {s:.2f} s" for name, s in stages.items())
          + f"; sum {sum(stages.values()):.2f} s, half of it {sum(stages.values()) / 2:.2f} s")


if __name__ == "__main__":
    main()
