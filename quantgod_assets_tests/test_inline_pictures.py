"""Pictures inline in the Dagster UI: a picture in a daily stage's metadata keeps its data: URI
Markdown (behind "[Show Markdown]") and gains a short `{key}_inline` Markdown (under the UI's
1000-character limit for drawing Markdown in place) whose image the Dagster webserver serves."""

from __future__ import annotations

import asyncio
import io

import matplotlib.image as mpimg
import pytest

from quantgod_assets import plots
from quantgod_assets.assets.reporting import metadata_values
from quantgod_assets.daily.outcome import Markdown

UI_INLINE_LIMIT = 1000  # ui-core MetadataEntry.tsx: Markdown under this many characters is drawn in place


def _png() -> bytes:
    dist = {"counts": {"SELL": 1, "NEUTRAL": 2, "BUY": 1}, "shares": {"SELL": 0.25, "NEUTRAL": 0.5, "BUY": 0.25}}
    return plots.distribution_png(dist, "labels")


def test_markdown_picture_reads_back_a_png_markdown_and_nothing_else():
    png = _png()
    assert Markdown(plots.png_markdown(png, "labels")).picture == ("labels", png)
    assert Markdown("| a |\n|---|\n| 1 |").picture is None
    assert Markdown(plots.png_markdown(png) + " and text").picture is None


def test_a_picture_is_served_inline_by_the_dagster_webserver(tmp_path, monkeypatch):
    import dagster as dg
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import EmptyWorkspaceTarget
    from dagster_webserver.webserver import DagsterWebserver

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    png = _png()
    values = metadata_values({"chart": Markdown(plots.png_markdown(png, "labels")), "rows": 3,
                              "table": Markdown("| a |\n|---|\n| 1 |")})
    assert values["chart"].value.startswith("![labels](data:image/png;base64,")  # the fallback stays
    assert set(values) == {"chart", "chart_inline", "rows", "table"}  # a table is no picture
    inline = values["chart_inline"].value
    assert len(inline) < UI_INLINE_LIMIT and inline.startswith("![labels](/logs/quantgod_pictures/")
    url = inline[len("![labels]("):-1]

    with dg.DagsterInstance.get() as instance:
        context = WorkspaceProcessContext(instance, EmptyWorkspaceTarget())
        status, headers, body = asyncio.run(_get(DagsterWebserver(context).create_asgi_app(), url))
    assert status == 200
    assert headers["content-type"] == "image/png"
    assert body == png
    assert mpimg.imread(io.BytesIO(body), format="png").shape[1] >= plots.MIN_WIDTH_PX


async def _get(app, path: str) -> tuple[int, dict[str, str], bytes]:
    """One GET through the webserver's ASGI app, as a browser's <img> would ask for it."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
             "headers": [(b"host", b"localhost")], "client": ("127.0.0.1", 1), "server": ("localhost", 3000)}
    sent: list[dict] = []
    asked = False

    async def receive() -> dict:
        nonlocal asked
        if not asked:
            asked = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    return start["status"], headers, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def test_without_an_instance_home_only_the_fallback_is_given(monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    values = metadata_values({"chart": Markdown(plots.png_markdown(_png(), "labels"))})
    assert set(values) == {"chart"}
    with pytest.raises(Exception):  # noqa: B017 - what Dagster raises without DAGSTER_HOME
        __import__("dagster").DagsterInstance.get()
