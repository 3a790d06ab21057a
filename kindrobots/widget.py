"""The embeddable chat widget: ``GET /widget.js`` and, in development, a demo page."""

from __future__ import annotations

import hashlib
import html
import re
from dataclasses import dataclass
from importlib import resources

from aiohttp import web

from kindrobots.config import Settings

WIDGET_PATH = "/widget.js"
DEMO_PATH = "/widget/demo"
JAVASCRIPT = "application/javascript"
CACHE_CONTROL = "public, max-age=300"
PROJECT_KEY = re.compile(r"^pk_[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class WidgetScript:
    body: bytes
    etag: str  # quoted, strong

    @classmethod
    def load(cls) -> WidgetScript:
        body = resources.files("kindrobots").joinpath("static/widget.js").read_bytes()
        return cls(body, f'"{hashlib.sha256(body).hexdigest()[:32]}"')


WIDGET_SCRIPT: web.AppKey[WidgetScript] = web.AppKey("widget_script", WidgetScript)


def _etag_matches(header: str, etag: str) -> bool:
    """If-None-Match uses the weak comparison: ``W/"x"`` matches ``"x"``; ``*`` matches all."""
    candidates = [part.strip() for part in header.split(",")]
    return any(c == "*" or c.removeprefix("W/") == etag for c in candidates)


async def widget_js(request: web.Request) -> web.Response:
    script = request.app[WIDGET_SCRIPT]
    headers = {
        "ETag": script.etag,
        "Cache-Control": CACHE_CONTROL,
        "X-Content-Type-Options": "nosniff",
        # Any site may embed the script, also one that sends Cross-Origin-Embedder-Policy.
        "Cross-Origin-Resource-Policy": "cross-origin",
    }
    if _etag_matches(request.headers.get("If-None-Match", ""), script.etag):
        return web.Response(status=304, headers=headers)
    return web.Response(body=script.body, content_type=JAVASCRIPT, charset="utf-8", headers=headers)


DEMO_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Kind Robots widget demo</title>
<link rel="icon" href="data:,">
</head>
<body>
<h1>Kind Robots widget demo</h1>
<p>{message}</p>
{script}
</body>
</html>
"""

DEMO_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; connect-src 'self'; "
        "style-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


async def widget_demo(request: web.Request) -> web.Response:
    """Development only: a page that embeds the widget with ``?key=pk_…``.

    The page's own origin (this server's) must be among the project's allowed origins.
    """
    key = request.query.get("key", "")
    if not PROJECT_KEY.fullmatch(key):
        body = DEMO_PAGE.format(
            message="Open this page as <code>/widget/demo?key=pk_…</code> with the publishable "
            "key of a project whose allowed origins include this server's origin.",
            script="",
        )
        return web.Response(text=body, status=400, content_type="text/html", headers=DEMO_HEADERS)
    origin = f"{request.scheme}://{request.host}"
    script = (
        f'<script src="{WIDGET_PATH}" data-project-key="{html.escape(key)}" '
        'data-title="Kind Robots demo" async></script>'
    )
    body = DEMO_PAGE.format(
        message=f"The chat button is at the bottom right. Allowed origins of the project must "
        f"include <code>{html.escape(origin)}</code>.",
        script=script,
    )
    return web.Response(text=body, content_type="text/html", headers=DEMO_HEADERS)


def add_widget_routes(app: web.Application, settings: Settings) -> None:
    """``GET /widget.js`` always; the demo page outside production only (else a plain 404)."""
    app[WIDGET_SCRIPT] = WidgetScript.load()
    app.router.add_get(WIDGET_PATH, widget_js)
    if not settings.is_production:
        app.router.add_get(DEMO_PATH, widget_demo)
