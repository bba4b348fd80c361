"""The UI in a real browser: the Dagster webserver against a temp instance, read by headless Chromium.

One generated short day is materialized through the real CLI into a temp DAGSTER_HOME; then
`dagster-webserver -m quantgod_assets.definitions` serves that instance on 127.0.0.1 and Debian's
`chromium` (installed by `.ci/run`) renders two pages after their JavaScript ran
(`--virtual-time-budget`, `--dump-dom`, `--screenshot`):

- the global asset lineage with every group expanded: the asset graph's nodes name the five assets
  (and the two summaries), and preprocessed_book's node shows a latest event;
- preprocessed_book's partitions page with 2025-03-14 selected: one partition materialized, by the
  run the CLI made, with the Parquet path in its metadata.

Screenshots of both pages are written to the test's tmp folder (`asset_graph.png`,
`preprocessed_book_partitions.png`) to look at.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from html.parser import HTMLParser
from pathlib import Path

import dagster as dg
import pytest

from quantgod_assets.launch import materialize_range

from .builders import DAY1

LOCATION = "quantgod_assets.definitions"
FIVE_ASSETS = ("raw_zip", "preprocessed_book", "labelled_frame", "optimization", "model")
ALL_ASSETS = (*FIVE_ASSETS, "label_distribution", "preprocessed_book_days", "predictions", "live_performance")
GROUPS = ("etl", "labelling", "ml")
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--window-size=1920,1080", "--virtual-time-budget=15000",
)
SERVER_START_S = 75  # the webserver answering and the code location loaded
PAGE_S = 60  # per page, retries included


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(
        "Chromium is not installed: this test renders the Dagster UI in Debian's headless `chromium`. "
        "`.ci/run` installs it (apt-get install -y chromium); on a Debian/Ubuntu machine: "
        "`sudo apt-get install -y chromium`.",
        pytrace=False,
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def webserver_command(port: int) -> list[str]:
    script = Path(sys.executable).with_name("dagster-webserver")
    program = [str(script)] if script.is_file() else [sys.executable, "-m", "dagster_webserver"]
    return [*program, "-m", LOCATION, "-h", "127.0.0.1", "-p", str(port)]


def tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.is_file() else "(no log)"


def graphql(base: str, query: str) -> dict:
    request = urllib.request.Request(
        f"{base}/graphql", data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"}, method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


WORKSPACE = """{ workspaceOrError { __typename ... on Workspace { locationEntries {
  name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }"""


def wait_until_served(base: str, server: subprocess.Popen, log: Path) -> None:
    """Until /server_info answers and the code location has loaded (bounded; fails with the log)."""
    deadline = time.monotonic() + SERVER_START_S
    last = "no answer yet"
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"dagster-webserver exited with {server.returncode} before serving:\n{tail(log)}")
        try:
            with urllib.request.urlopen(f"{base}/server_info", timeout=2) as response:
                last = f"/server_info: {response.read()[:200]!r}"
            entries = graphql(base, WORKSPACE)["data"]["workspaceOrError"]["locationEntries"]
            [entry] = [e for e in entries if e["name"] == LOCATION] or [None]
            last = f"location entry: {entry}"
            if entry and entry["loadStatus"] == "LOADED":
                loaded = entry["locationOrLoadError"] or {}
                assert loaded.get("__typename") == "RepositoryLocation", (
                    f"the code location failed to load in the webserver: {loaded}\n{tail(log)}")
                return
        except (OSError, KeyError, TypeError, ValueError) as exc:  # not up yet
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.5)
    pytest.fail(f"dagster-webserver did not serve {base} within {SERVER_START_S} s ({last}):\n{tail(log)}")


def stop(server: subprocess.Popen) -> None:
    """The webserver and the code server it started (its own process group)."""
    if server.poll() is None:
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=15)
        except ProcessLookupError:
            pass
    with contextlib.suppress(ProcessLookupError, PermissionError):  # children left in the group go too
        os.killpg(server.pid, signal.SIGKILL)


class PageText(HTMLParser):
    """Visible text of a dumped DOM: all of it, and the part inside <svg> (the graph's nodes)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.chunks: list[str] = []
        self.svg_chunks: list[str] = []
        self._hidden = 0
        self._svg = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style", "noscript", "template"):
            self._hidden += 1
        elif tag == "svg":
            self._svg += 1

    def handle_endtag(self, tag):
        if tag in ("script", "style", "noscript", "template"):
            self._hidden = max(0, self._hidden - 1)
        elif tag == "svg":
            self._svg = max(0, self._svg - 1)

    def handle_data(self, data):
        text = " ".join(data.split())
        if text and not self._hidden:
            self.chunks.append(text)
            if self._svg:
                self.svg_chunks.append(text)

    @classmethod
    def of(cls, dom: str) -> PageText:
        parser = cls()
        parser.feed(dom)
        parser.close()
        return parser

    @property
    def text(self) -> str:
        return " ".join(self.chunks)

    @property
    def svg_text(self) -> str:
        return " ".join(self.svg_chunks)


def render(url: str, out: Path, name: str, problem: Callable[[PageText], str | None]) -> PageText:
    """Renders `url` in headless Chromium (fresh profile) until `problem` finds none, within PAGE_S.

    Writes `out/name.html` (the DOM after JavaScript) and `out/name.png` (screenshot) of the last try.
    """
    binary = chromium()
    deadline = time.monotonic() + PAGE_S
    attempt, found, page, stderr = 0, "not rendered", None, ""
    while time.monotonic() < deadline:
        attempt += 1
        profile = out / f"chromium-profile-{name}-{attempt}"
        shot = out / f"{name}.png"
        shot.unlink(missing_ok=True)
        try:
            done = subprocess.run(
                [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={shot}", "--dump-dom", url],
                capture_output=True, text=True, timeout=max(10.0, deadline - time.monotonic()),
            )
        except subprocess.TimeoutExpired:
            found = f"chromium did not finish within {PAGE_S} s"
            break
        finally:
            shutil.rmtree(profile, ignore_errors=True)
        stderr = done.stderr
        (out / f"{name}.html").write_text(done.stdout)
        if done.returncode != 0:
            found = f"chromium exited with {done.returncode}"
        else:
            page = PageText.of(done.stdout)
            found = problem(page)
            if found is None:
                data = shot.read_bytes() if shot.is_file() else b""
                assert data.startswith(b"\x89PNG") and len(data) > 10_000, (
                    f"no usable screenshot of {url} at {shot} ({len(data)} bytes)")
                return page
        time.sleep(1.0)
    snippet = page.text[:4000] if page else "(no DOM)"
    pytest.fail(
        f"{url} in headless Chromium after {attempt} try(s): {found}\n"
        f"--- rendered text (DOM in {out / (name + '.html')}) ---\n{snippet}\n"
        f"--- chromium stderr (tail) ---\n{stderr[-1500:]}",
        pytrace=False,
    )


def node_label(asset: str) -> str:
    """The asset's node label as a pattern: its name, or the UI's shortened `prefix…suffix` of it
    (a long name in a graph scaled to fit, e.g. `preprocessed…_days`)."""
    shortened = "|".join(f"{re.escape(asset[:k])}…{re.escape(asset[j:])}"
                         for k in range(4, len(asset)) for j in range(k + 1, len(asset) - 3))
    return rf"(?<![\w…])(?:{re.escape(asset)}{'|' + shortened if shortened else ''})(?![\w…])"


def graph_problem(page: PageText) -> str | None:
    graph = page.svg_text
    missing = [asset for asset in ALL_ASSETS if not re.search(node_label(asset), graph)]
    if missing:
        return f"the asset graph's nodes lack {missing}; graph text: {graph[:1500]!r}"
    return None


def latest_event_problem(page: PageText) -> str | None:
    graph = page.svg_text
    latest = re.search(r"(?<![\w…])preprocessed_book Latest event (.*?) Asset checks", graph)
    if not latest or not latest.group(1).strip(" –-"):
        return f"preprocessed_book's node shows no latest event; graph text: {graph[:1500]!r}"
    return None


def partitions_problem(run_id: str, parquet: Path) -> Callable[[PageText], str | None]:
    def problem(page: PageText) -> str | None:
        text = page.text
        wanted = {
            "the count of materialized partitions": "Materialized (1)",
            "the selected partition's status": f"{DAY1.isoformat()} Materialized",
            "the run that materialized it": run_id[:8],
            "the Parquet path in its metadata": parquet.as_posix(),
        }
        missing = [f"{what} ({needle!r})" for what, needle in wanted.items() if needle not in text]
        return f"the partitions page lacks {', '.join(missing)}" if missing else None

    return problem


def materialization_run(home: Path) -> tuple[str, list[str]]:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(["BTCUSDT_linear", "preprocessed_book"])), limit=10).records
        partitions = [record.partition_key for record in records]
        return (records[0].run_id if records else ""), partitions


def test_ui_shows_the_asset_graph_and_a_materialized_partition(qg_env, tmp_path):
    chromium()  # fail first, and plainly, when the browser is missing
    done = materialize_range(DAY1, env=qg_env.env(), cwd=qg_env.root, capture=True, timeout_s=240,
                             config_overrides={"etl.yaml": {"checks": {"gap_fail_share": 1.0}}})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run_id, partitions = materialization_run(qg_env.dagster_home)
    assert partitions == [DAY1.isoformat()], partitions

    # the "join the community" dialog shows once per instance on localhost: mark it seen, so the
    # screenshots show the pages rather than the dialog
    nux = qg_env.dagster_home / ".nux"
    nux.mkdir(exist_ok=True)
    (nux / "nux.yaml").write_text("seen: 1\n")

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "webserver.log"
    with log.open("w") as log_file:
        server = subprocess.Popen(
            webserver_command(port), cwd=qg_env.root, env={**os.environ, **qg_env.env()},
            stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    try:
        wait_until_served(base, server, log)

        def lineage_url(expanded: Sequence[str]) -> str:
            groups = [f"global@global:{g}" for g in expanded] + [f"__repository__@{LOCATION}:{g}" for g in expanded]
            return f"{base}/asset-groups?" + urllib.parse.urlencode({"expanded": ",".join(groups)})

        render(lineage_url(GROUPS), tmp_path, "asset_graph", graph_problem)  # every node, names at least
        # the etl group alone is drawn large enough for a node's details: the latest event
        render(lineage_url(("etl",)), tmp_path, "asset_graph_etl", latest_event_problem)

        partitions_url = f"{base}/assets/BTCUSDT_linear/preprocessed_book?" + urllib.parse.urlencode(
            {"view": "partitions", "partition": DAY1.isoformat()})
        render(partitions_url, tmp_path, "preprocessed_book_partitions",
               partitions_problem(run_id, qg_env.preprocessed(DAY1)))
        # the day's micro-price picture is drawn in the metadata table itself, an image the
        # webserver serves, not only a "[Show Markdown]" link
        dom = (tmp_path / "preprocessed_book_partitions.html").read_text()
        inline = re.search(r'<img src="(/logs/quantgod_pictures/[0-9a-f]+/png)" alt="micro_price"', dom)
        assert inline, "no inline micro_price picture in the partition's metadata"
        with urllib.request.urlopen(base + inline.group(1), timeout=30) as response:
            assert response.read(8) == b"\x89PNG\r\n\x1a\n"
    finally:
        stop(server)
    print(f"screenshots: {tmp_path / 'asset_graph.png'}, {tmp_path / 'preprocessed_book_partitions.png'}")
