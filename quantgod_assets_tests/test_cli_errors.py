"""`quantgod` as a user types it, failing as expected: one `error: <file>: <what>` line on stderr,
exit 2, no traceback, and nothing the user had replaced; a bug still shows its traceback."""

from __future__ import annotations

import datetime as dt
import errno
import os
import resource
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from quantgod_assets import cli

from .builders import REPO, msg

DAY = dt.date(2025, 3, 14)
NAME = "2025-03-14_BTCUSDT_ob200.data"
ARCHIVE = f"{NAME}.zip"


def write_zip(folder: Path) -> Path:
    """A short good day (one snapshot, then a delta a second) as Bybit packs it."""
    from quantgod_assets.orderbook.replay import day_start_ms

    t0 = day_start_ms(DAY)
    lines = [msg("snapshot", t0 + 500, bids=[("100.0", "1")], asks=[("100.1", "3")], u=1)]
    lines += [msg("delta", t0 + 1000 * s, bids=[("100.0", str(1 + s % 5))], u=s + 1) for s in range(1, 400)]
    path = folder / ARCHIVE
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(NAME, ("\r\n".join(lines) + "\r\n").encode())
    return path


def quantgod(*args: str, cwd: Path, env: dict[str, str] | None = None,
             file_size_limit: int | None = None) -> subprocess.CompletedProcess:
    """`quantgod ARGS` in `cwd`; with `file_size_limit`, no file it writes may grow past that many
    bytes (RLIMIT_FSIZE, SIGXFSZ ignored): the write fails with EFBIG, as on a full disk (ENOSPC)."""

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    run_env = {**os.environ, "QUANTGOD_CONFIG_DIR": str(REPO / "configs"), "MPLBACKEND": "Agg",
               "QUANTGOD_DATA_DIR": str(cwd / "data"), "QUANTGOD_LOGS_DIR": str(cwd / "logs"),
               "QUANTGOD_RAW_ROOT": str(cwd / "raw"), **(env or {})}
    run_env.pop("QUANTGOD_ML_PROFILE", None)
    return subprocess.run([sys.executable, "-m", "quantgod_assets.cli", *args], cwd=cwd, env=run_env,
                          capture_output=True, text=True, timeout=300,
                          preexec_fn=limit_file_size if file_size_limit is not None else None)


def one_error_line(done: subprocess.CompletedProcess, *words: str) -> str:
    """The single `error: ` line of a run that failed as expected; it holds every one of `words`."""
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, done.stderr
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


@pytest.fixture
def archive(tmp_path) -> Path:
    return write_zip(tmp_path)


@pytest.mark.parametrize("spelling", [ARCHIVE, f"./{ARCHIVE}", "link.zip"])
def test_etl_output_equal_to_its_input_is_refused_and_the_archive_kept(tmp_path, archive, spelling):
    os.link(archive, tmp_path / "link.zip")  # a hard link: one file, another name (os.path.samefile)
    before = archive.read_bytes()
    done = quantgod("etl", ARCHIVE, "-o", spelling, cwd=tmp_path)
    line = one_error_line(done, f"error: {Path(spelling)}: is the input file")
    assert done.stdout == "" and archive.read_bytes() == before, line
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([ARCHIVE, "link.zip"])  # no temp file


def test_etl_output_naming_a_folder_is_refused(tmp_path, archive):
    (tmp_path / "out").mkdir()
    done = quantgod("etl", ARCHIVE, "-o", "out", cwd=tmp_path)
    one_error_line(done, "error: out: is a folder")
    assert list((tmp_path / "out").iterdir()) == []


def test_etl_output_under_a_file_is_refused(tmp_path, archive):
    done = quantgod("etl", ARCHIVE, "-o", f"{ARCHIVE}/day.parquet", cwd=tmp_path)
    one_error_line(done, f"{ARCHIVE}/day.parquet", "is not a folder")


def test_etl_device_output_is_refused(tmp_path, archive):
    # os.replace onto a device would replace the device node itself (as root)
    done = quantgod("etl", ARCHIVE, "-o", os.devnull, cwd=tmp_path)
    one_error_line(done, os.devnull, "not a regular file")
    assert Path(os.devnull).is_char_device()


def test_etl_missing_input_and_folder_input(tmp_path):
    one_error_line(quantgod("etl", "gone.data.zip", "-o", "day.parquet", cwd=tmp_path), "gone.data.zip: no such file")
    (tmp_path / "days").mkdir()
    one_error_line(quantgod("etl", "days", "-o", "day.parquet", cwd=tmp_path), "days: is a folder")
    assert not (tmp_path / "day.parquet").exists()


def test_etl_encrypted_zip_member(tmp_path, archive):
    raw = bytearray(archive.read_bytes())
    raw[raw.index(b"PK\x03\x04") + 6] |= 1  # general-purpose flag bit 0, local header
    raw[raw.index(b"PK\x01\x02") + 8] |= 1  # and central directory: "encrypted"
    archive.write_bytes(bytes(raw))
    assert zipfile.ZipFile(archive).infolist()[0].flag_bits & 1
    done = quantgod("etl", ARCHIVE, "-o", "day.parquet", cwd=tmp_path)
    one_error_line(done, ARCHIVE, "encrypted ZIP member", "not supported")
    assert not (tmp_path / "day.parquet").exists()


def test_etl_full_disk_names_the_output_and_leaves_nothing(tmp_path, archive):
    # first without a limit: the file converts, and numba's on-disk cache is warm, so the limited
    # run has nothing to write but the Parquet
    assert quantgod("etl", ARCHIVE, "-o", "warm.parquet", cwd=tmp_path).returncode == 0
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "day.parquet").write_bytes(b"yesterday's output")
    done = quantgod("etl", ARCHIVE, "-o", "out/day.parquet", cwd=tmp_path, file_size_limit=4096)
    one_error_line(done, "error: out/day.parquet: ", "disk is full", os.strerror(errno.EFBIG))
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["day.parquet"]  # no temp file left
    assert (tmp_path / "out" / "day.parquet").read_bytes() == b"yesterday's output"


def test_generate_full_disk_and_out_a_file(tmp_path):
    # first without a limit, which warms numba's on-disk cache (see above)
    generate = ("generate", "--start", "2025-03-14", "--duration-s", "60")
    assert quantgod(*generate, "--out", "warm", cwd=tmp_path).returncode == 0
    done = quantgod("generate", "--start", "2025-03-14", "--out", "days", "--duration-s", "60", cwd=tmp_path,
                    file_size_limit=4096)
    one_error_line(done, "days", "disk is full")
    assert not [p for p in (tmp_path / "days").rglob("*") if p.is_file()]
    (tmp_path / "taken").write_text("a file")
    done = quantgod("generate", "--start", "2025-03-14", "--out", "taken", cwd=tmp_path)
    one_error_line(done, "taken: is not a folder")
    one_error_line(quantgod("generate", "--start", "2025-03-14", "--out", "d", "--days", "0", cwd=tmp_path),
                   "--days must be at least 1")


def test_bad_settings_fail_plots_and_demo_in_one_line(tmp_path):
    configs = tmp_path / "configs"
    configs.mkdir()
    for path in (REPO / "configs").glob("*.yaml"):
        (configs / path.name).write_text(path.read_text())
    (configs / "etl.yaml").write_text("max_silence_s: [\n")  # not YAML: a multi-line parser message
    env = {"QUANTGOD_CONFIG_DIR": str(configs)}
    for args in (("plots", "--date", "2025-03-14"), ("demo", "--days", "1")):
        one_error_line(quantgod(*args, cwd=tmp_path, env=env), str(configs / "etl.yaml"), "not valid YAML")
    assert not (tmp_path / "raw").exists() and not (tmp_path / "logs").exists()  # the demo generated nothing


def test_plots_out_a_file_is_refused(tmp_path):
    (tmp_path / "pictures").write_text("a file")
    one_error_line(quantgod("plots", "--date", "2025-03-14", "--out", "pictures", cwd=tmp_path),
                   "pictures: is not a folder")


# In-process: what is not an expected failure keeps its traceback


def test_a_bug_keeps_its_traceback(tmp_path, archive, monkeypatch):
    import quantgod_assets.orderbook.etl as etl

    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(etl, "convert_day", broken)
    with pytest.raises(KeyError, match="a bug"):
        cli.main(["etl", str(archive), "-o", str(tmp_path / "day.parquet")])

    def out_of_memory(*args, **kwargs):
        raise OSError(errno.ENOMEM, os.strerror(errno.ENOMEM))

    monkeypatch.setattr(etl, "convert_day", out_of_memory)
    with pytest.raises(OSError, match="Cannot allocate memory"):
        cli.main(["etl", str(archive), "-o", str(tmp_path / "day.parquet")])


def test_os_error_lines_name_the_file_written(tmp_path):
    target = tmp_path / "day.parquet"
    temp = tmp_path / ".day.parquet.x1y2.tmp"
    full = OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")
    assert cli.os_error_line(full, target) == (
        f"{target}: cannot write: the disk is full or a file size limit is reached (No space left on device)")
    assert cli.os_error_line(OSError(errno.EDQUOT, "quota", str(temp)), target).startswith(f"{target}: ")
    denied = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "other"))
    assert cli.os_error_line(denied, target) == f"{tmp_path / 'other'}: Permission denied"
