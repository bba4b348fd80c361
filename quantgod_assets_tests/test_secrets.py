"""secrets.py: URL passwords masked wherever a URL is shown; the file logs' safety net; errors
quoting a secret re-raised masked, without their chain."""

import io
import logging
import traceback

import pytest

from quantgod_assets.logs import run_log
from quantgod_assets.secrets import (
    MASK,
    RedactedError,
    RedactingFilter,
    redact_library_logs,
    redact_text,
    redact_url,
    redacted_errors,
    url_secrets,
)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        # userinfo passwords, the compose file's URLs first
        ("postgresql+psycopg2://quantgod:s3cret@postgres:5432/optuna",
         "postgresql+psycopg2://quantgod:***@postgres:5432/optuna"),
        ("postgresql+psycopg2://quantgod:s3cret@postgres:5432/mlflow",
         "postgresql+psycopg2://quantgod:***@postgres:5432/mlflow"),
        ("postgresql://optuna:pw@db/optuna", "postgresql://optuna:***@db/optuna"),
        ("http://user:secret@host:5000", "http://user:***@host:5000"),
        ("https://user:secret@mlflow.example.com/", "https://user:***@mlflow.example.com/"),
        ("mysql+pymysql://root:toor@127.0.0.1:3306/optuna?charset=utf8mb4",
         "mysql+pymysql://root:***@127.0.0.1:3306/optuna?charset=utf8mb4"),
        ("redis://:onlypassword@cache:6379/0", "redis://:***@cache:6379/0"),
        ("http://u:pw9@[::1]:5000/x", "http://u:***@[::1]:5000/x"),
        # awkward passwords: escaped, unescaped @ and /, colons, many characters
        ("postgresql://u:p%40ss%2Fw@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:p@ss@h/db", "postgresql://u:***@h/db"),
        ("mysql://u:pa/ss@h/db", "mysql://u:***@h/db"),
        ("postgresql://u:a:b:c@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgresql://u:!$&'()*+,;=~-._@h/db", "postgresql://u:***@h/db"),
        # query passwords (libpq, a SQLite URI, tokens)
        ("postgresql://db/optuna?user=q&password=s3&sslmode=require",
         "postgresql://db/optuna?user=q&password=***&sslmode=require"),
        ("postgresql://u:pw@db/optuna?sslpassword=k", "postgresql://u:***@db/optuna?sslpassword=***"),
        ("sqlite:///file:/tmp/a.db?mode=rwc&password=PL&uri=true",
         "sqlite:///file:/tmp/a.db?mode=rwc&password=***&uri=true"),
        ("https://h/x?token=abc#frag", "https://h/x?token=***#frag"),
        ("https://h/x?access_token=S1&api_key=S2&apikey=S3&sig=S4&client_secret=S5&PWD=S6&db_pass=S7",
         "https://h/x?access_token=***&api_key=***&apikey=***&sig=***&client_secret=***&PWD=***&db_pass=***"),
        ("/mnt/shared/optuna.log?password=x", "/mnt/shared/optuna.log?password=***"),
    ],
)
def test_redact_url_masks_every_password(url, shown):
    assert redact_url(url) == shown
    assert redact_url(shown) == shown  # masking twice changes nothing
    for secret in url_secrets(url):
        assert secret not in redact_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///optuna_study.db",
        "sqlite:////abs/path/optuna_study.db",
        "sqlite:///:memory:",
        "sqlite://",
        "sqlite:///file:/tmp/a.db?mode=rwc&uri=true",
        "/tmp/study.log",
        "optuna_journal.jsonl",
        "C:\\runs\\optuna.log",
        "file:///home/me/mlruns",
        "file:///home/a@b/mlruns",
        "./mlruns",
        "http://mlflow:5000",
        "http://user@mlflow:5000",  # a user, no password
        "http://user:@mlflow:5000",  # an empty password
        "postgresql://db/optuna?sslmode=require&user=q",
        "https://h/x?passage=1&signal=2&tokens_per_s=3",  # not secret keys
        "databricks",
        "",
    ],
)
def test_redact_url_leaves_urls_without_a_password_alone(url):
    assert redact_url(url) == url
    assert url_secrets(url) == []


def test_url_secrets_gives_the_written_and_the_unquoted_forms():
    assert url_secrets("postgresql://u:p%40ss@h/db") == ["p%40ss", "p@ss"]
    assert url_secrets("http://u:a@h", None, "", "sqlite:///x.db", "https://h?token=t+1") == ["t 1", "t+1", "a"]


def test_redact_text_masks_urls_inside_free_text():
    line = ("Study 'x' (postgresql+psycopg2://quantgod:s3cret@postgres:5432/optuna): 2 trials | "
            "tracking 'http://u:pw@mlflow:5000/api' | mail me@example.com at 10:32:01 | "
            "retry https://h/x?user=a&password=zz&b=1, then (redis://:rr@cache)")
    assert redact_text(line) == (
        "Study 'x' (postgresql+psycopg2://quantgod:***@postgres:5432/optuna): 2 trials | "
        "tracking 'http://u:***@mlflow:5000/api' | mail me@example.com at 10:32:01 | "
        "retry https://h/x?user=a&password=***&b=1, then (redis://:***@cache)")
    plain = "Trial 3 START | tcn=64, lstm=256, seq=720, lr=0.000312 | arch=tcn_lstm, dropout=0.2"
    assert redact_text(plain) == plain


def test_a_secret_in_an_error_is_reraised_masked_and_unchained():
    url = "postgresql+psycopg2://quantgod:s3cret@postgres:5432/optuna"

    def connect():
        try:
            raise OSError(f"could not connect to {url}")
        except OSError as exc:
            raise ValueError("storage failed") from exc  # the secret only in the cause

    with pytest.raises(RedactedError) as caught, redacted_errors(url, None):
        connect()
    error = caught.value
    assert str(error) == "ValueError: storage failed" and error.original_type == "ValueError"
    assert error.__cause__ is None and error.__suppress_context__
    printed = "".join(traceback.format_exception(error))
    assert "s3cret" not in printed and "RedactedError" in printed

    with pytest.raises(RedactedError, match=r"quantgod:\*\*\*@postgres") as caught, redacted_errors(url):
        raise ConnectionError(f"failed: {url} (percent form {url.replace('s3cret', 's3%63ret')})")
    assert "s3cret" not in str(caught.value) and "s3%63ret" not in str(caught.value)


def test_errors_without_a_secret_pass_unchanged():
    err = RuntimeError("no completed trial")
    with pytest.raises(RuntimeError) as caught, redacted_errors("postgresql://u:pw@h/db"):
        raise err
    assert caught.value is err
    with pytest.raises(KeyError), redacted_errors("sqlite:///x.db"):
        raise KeyError("pw")  # a URL without a password has nothing to hide
    # a RedactedError is no RuntimeError: `except RuntimeError` (the worker's) does not swallow it
    assert not issubclass(RedactedError, RuntimeError)


def test_the_filter_masks_messages_args_and_tracebacks():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("quantgod_assets_tests.secrets.filter")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("storage %s", "postgresql://u:pw1@h/db")
        try:
            raise ValueError("http://u:pw2@h:5000 refused")
        except ValueError:
            logger.exception("failed")
        logger.warning("nothing to hide: %d trials", 2)
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert "pw1" not in text and "pw2" not in text, text
    assert "postgresql://u:***@h/db" in text and "http://u:***@h:5000 refused" in text
    assert "nothing to hide: 2 trials" in text


def test_library_loggers_and_their_children_are_masked_once_installed():
    redact_library_logs(["quantgod_assets_tests.secrets.lib"])
    redact_library_logs(["quantgod_assets_tests.secrets.lib"])  # twice: one factory, not two
    assert getattr(logging.getLogRecordFactory(), "quantgod_redacting", False)
    written = io.StringIO()
    child = logging.getLogger("quantgod_assets_tests.secrets.lib.engine.Engine")  # as sqlalchemy logs
    child.addHandler(handler := logging.StreamHandler(written))
    other = logging.getLogger("quantgod_assets_tests.secrets.elsewhere")
    other.addHandler(other_handler := logging.StreamHandler(written))
    try:
        child.warning("connect to %s failed", "postgresql://quantgod:s3cret@db/optuna")
        other.warning("not a library: %s", "kept as is")
    finally:
        child.removeHandler(handler)
        other.removeHandler(other_handler)
    text = written.getvalue()
    assert "s3cret" not in text and "postgresql://quantgod:***@db/optuna" in text and "kept as is" in text
    nameless = logging.getLogRecordFactory()(None, logging.INFO, __file__, 1, "no name", None, None)
    assert nameless.getMessage() == "no name"  # Dagster makes such records: the factory must pass them


def test_run_log_file_and_forwarded_lines_never_hold_a_password(tmp_path):
    forwarded = io.StringIO()
    target = logging.getLogger("quantgod_assets_tests.secrets.run_log")
    target.propagate = False
    target.setLevel(logging.DEBUG)
    target_handler = logging.StreamHandler(forwarded)
    target.addHandler(target_handler)
    try:
        with run_log("optimization", tmp_path, "SUFFIX", forward_to=target, cumulative=True) as log:
            log.info("Study 'x' (postgresql+psycopg2://quantgod:pw1@postgres:5432/optuna): 2 trials")
            log.info("MLflow at %s", "http://u:pw2@mlflow:5000")
            try:
                raise ConnectionError("https://h/api?token=pw3 refused")
            except ConnectionError:
                log.debug("traceback", exc_info=True)
    finally:
        target.removeHandler(target_handler)
    files = list((tmp_path / "optimization").iterdir())
    assert len(files) == 2  # the run's log and the cumulative one
    for text in [forwarded.getvalue(), *(f.read_text() for f in files)]:
        for secret in ("pw1", "pw2", "pw3"):
            assert secret not in text, text
    assert f"quantgod:{MASK}@postgres" in files[0].read_text()
    assert f"http://u:{MASK}@mlflow:5000" in forwarded.getvalue()
