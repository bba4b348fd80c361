"""Secrets never leave the process: a storage or tracking URL is shown with its password masked.

    redact_url("postgresql+psycopg2://quantgod:s3cret@postgres:5432/optuna")
    -> "postgresql+psycopg2://quantgod:***@postgres:5432/optuna"
    redact_url("http://user:s3cret@mlflow:5000")           -> "http://user:***@mlflow:5000"
    redact_url("postgresql://db/optuna?user=q&password=s")  -> "postgresql://db/optuna?user=q&password=***"
    redact_url("sqlite:///optuna_study.db")                 -> unchanged (no password)

The password runs to the `@` the host follows, as SQLAlchemy reads it, so an unescaped `@` or `/`
inside it is masked too (the price: `http://host:5000/a@b`, an `@` in a path, shows as
`http://host:***@b`: masking too much, never too little).

Every place that shows such a URL (log lines, Dagster metadata, MLflow params and tags,
best_params.json) shows `redact_url(url)`; the real URL is still the one used to connect.

- `redact_text(text)` masks every `scheme://user:password@` and `?password=...` inside free text
  (a log line, an error message): `RedactingFilter` applies it to log records, the safety net of
  the file logs (`logs.py`) and of MLflow's and Optuna's own loggers (`redact_library_logs`).
- `redacted_errors(*urls)`: an exception raised inside whose message (or a chained one's) holds
  one of the URLs' secrets is re-raised as a `RedactedError` with the secrets masked, its chain
  cut (`from None`), so that neither a traceback nor Dagster's event log carries the secret.

Plain standard library: no dagster, no mlflow.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote, unquote_plus

__all__ = [
    "MASK",
    "RedactedError",
    "RedactingFilter",
    "redact_library_logs",
    "redact_text",
    "redact_url",
    "redacted_errors",
    "url_secrets",
]

MASK = "***"

# query parameters whose value is a secret: password, passwd, sslpassword, secret, client_secret,
# token, access_token, api_key, apikey, credential(s), pass, pwd, db_pass, sig (a signed URL);
# not `passage` or `signal`
_SECRET_KEY = re.compile(r"password|passwd|secret|token$|api_?key|credentials?$|^(pass|pwd|sig)$|[_.\-](pass|pwd)$",
                         re.IGNORECASE)
_HOST = r"[\w.\-\[\]:%~]"  # a host, an IPv6 literal, a port
# scheme://user:password@host: the password runs (lazily) to the @ that the host follows, so an
# unescaped @ inside it is masked too; a user may be empty (redis://:password@host)
_USERINFO = (r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@?#'\"`]*:)(?P<secret>{password}?)"
             rf"(?=@{_HOST}*(?!@|{_HOST}))")
_USERINFO_IN_URL = re.compile(_USERINFO.format(password=r".*"), re.DOTALL)
_USERINFO_IN_TEXT = re.compile(_USERINFO.format(password=r"[^\s'\"`]*"))
# ?password=... / &token=... / ;pwd=... (up to the next & ; # quote or space)
_QUERY = re.compile(r"(?P<head>[?&;](?P<key>[A-Za-z0-9_.%\-]+)=)(?P<secret>[^&;#\s'\"`]+)")


def _secrets_in(text: str, userinfo: re.Pattern[str]) -> list[re.Match[str]]:
    matches = [m for m in userinfo.finditer(text) if m.group("secret")]
    matches += [m for m in _QUERY.finditer(text) if _SECRET_KEY.search(unquote_plus(m.group("key")))]
    return matches


def _mask(text: str, userinfo: re.Pattern[str]) -> str:
    out, last = [], 0
    for m in sorted(_secrets_in(text, userinfo), key=lambda m: m.start("secret")):
        if m.start("secret") < last:  # inside a secret already masked
            continue
        out += [text[last:m.start("secret")], MASK]
        last = m.end("secret")
    return "".join([*out, text[last:]])


def redact_url(url: str) -> str:
    """`url` with the password of its userinfo and secret query values (`password=`, `token=`…)
    replaced by `***`. A URL without a password, a SQLite URL or a plain path comes back unchanged.
    """
    url = str(url)
    if "@" not in url and "=" not in url:
        return url
    return _mask(url, _USERINFO_IN_URL)


def redact_text(text: str) -> str:
    """Every `scheme://user:password@` and secret query value (`?password=…`) inside `text` masked."""
    if "@" not in text and "=" not in text:
        return text
    return _mask(text, _USERINFO_IN_TEXT)


def url_secrets(*urls: str | None) -> list[str]:
    """The secrets of `urls` (userinfo password, secret query values) as written and unquoted:
    what must never appear outside the process. Longest first; empty for URLs without one."""
    found: set[str] = set()
    for url in urls:
        for m in _secrets_in(str(url or ""), _USERINFO_IN_URL):
            value = m.group("secret")
            found.update(form for form in (value, unquote(value), unquote_plus(value)) if form and form != MASK)
    return sorted(found, key=lambda secret: (-len(secret), secret))


def _scrub(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, MASK)
    return redact_text(text)


class RedactedError(Exception):
    """An error whose message held a secret: the same message, the secret masked; `original_type`
    names the exception it replaces (which stays in the process, unchained). Not a RuntimeError,
    so that code catching an expected RuntimeError does not swallow, say, a failed connection."""

    def __init__(self, message: str, original_type: str):
        super().__init__(message)
        self.original_type = original_type


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        item = todo.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        todo.extend([item.__cause__, item.__context__])


def _texts(exc: BaseException) -> Iterator[str]:
    for item in _chain(exc):
        try:
            yield str(item)
            yield repr(item)
        except Exception:  # a broken __str__ shows nothing, so it leaks nothing
            pass
        yield from (str(note) for note in getattr(item, "__notes__", ()))


@contextmanager
def redacted_errors(*urls: str | None) -> Iterator[None]:
    """Re-raises an exception whose message (or a chained exception's) holds a secret of `urls`
    as a `RedactedError` carrying the masked message, without the chain. Others pass unchanged."""
    secrets = url_secrets(*urls)
    if not secrets:
        yield
        return
    try:
        yield
    except Exception as exc:
        if not any(secret in text for text in _texts(exc) for secret in secrets):
            raise
        message = f"{type(exc).__name__}: {_scrub(str(exc), secrets)}"
        raise RedactedError(message, type(exc).__name__) from None


_TRACEBACK = logging.Formatter()


class RedactingFilter(logging.Filter):
    """Masks `scheme://user:password@` and `?password=` in every record's message (and its
    traceback text) before a handler writes it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: let the handler report it as usual
            return True
        masked = redact_text(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            # what a Formatter would write (and then reuse: it keeps exc_text), masked first
            record.exc_text = _TRACEBACK.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        return True


_FILTER = RedactingFilter()


_REDACTED_LOGGERS: set[str] = set()


def _redacting_factory(make: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        name = str(record.name or "")  # Dagster makes records with no name
        if any(name == n or name.startswith(n + ".") for n in _REDACTED_LOGGERS):
            _FILTER.filter(record)
        return record

    factory.quantgod_redacting = True  # type: ignore[attr-defined]  # marks it installed, once per process
    return factory


def redact_library_logs(names: Iterable[str] = ("mlflow", "optuna", "sqlalchemy", "alembic")) -> None:
    """Masks URLs in every record of these loggers AND their children (`sqlalchemy.engine.Engine`),
    when the record is made, so no handler anywhere (a library's own, the root's) sees the secret.

    A filter on a logger would not do: records of child loggers never pass their parents' filters.
    """
    _REDACTED_LOGGERS.update(names)
    current = logging.getLogRecordFactory()
    if not getattr(current, "quantgod_redacting", False):
        logging.setLogRecordFactory(_redacting_factory(current))
