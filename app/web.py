"""The student's page: a terminal, the timeline, the container panel.

Opening it gives the visitor their Docker host (see hosts.py). The browser's libraries
are served from node_modules/ (installed by the setup with npm), never from a CDN.
"""
from __future__ import annotations

from pathlib import Path

from flask import (Blueprint, abort, current_app, redirect, render_template, request,
                   send_from_directory, url_for)

from . import CHECKOUT
from .csrf import csrf_token
from .engine_client import EngineError
from .hosts import HostUnavailable, host_name, hosts, visitor_id

bp = Blueprint("web", __name__)

# URL under /vendor/ -> file under node_modules/: only these, nothing else from there.
VENDOR = {
    "xterm/xterm.js": "@xterm/xterm/lib/xterm.js",
    "xterm/xterm.css": "@xterm/xterm/css/xterm.css",
    "xterm/addon-fit.js": "@xterm/addon-fit/lib/addon-fit.js",
    "socket.io/socket.io.min.js": "socket.io-client/dist/socket.io.min.js",
}


def language() -> str:
    return request.accept_languages.best_match(["en", "ko"], default="en")


@bp.get("/")
def index():
    visitor = visitor_id(create=True)
    name = host_name(visitor)
    try:
        hosts().get(name, request.remote_addr or "?")
    except HostUnavailable as e:
        return render_template("unavailable.html", message=str(e), lang=language()), 429
    except EngineError as e:
        current_app.logger.error("index: %s", e)
        return render_template("unavailable.html", lang=language(),
                               message="The Glassbox daemon is not answering; try again in a minute."), 503
    return render_template("index.html", host=name, csrf_token=csrf_token(), lang=language())


@bp.post("/host/reset")
def reset_host():
    """Throws the visitor's host away (containers, images, volumes); the next page load
    makes a fresh one."""
    from .live import relays
    from .terminals import terminals
    visitor = visitor_id(create=False)
    if visitor is None:
        return redirect(url_for("web.index"))
    name = host_name(visitor)
    terminals.close_host(name)
    relays.drop(name)
    try:
        hosts().remove(name)
    except EngineError as e:
        current_app.logger.error("reset %s: %s", name, e)
        abort(503, "the Glassbox daemon did not free your host; try again")
    return redirect(url_for("web.index"))


@bp.get("/vendor/<path:name>")
def vendor(name: str):
    if name not in VENDOR:
        abort(404)
    path = Path(VENDOR[name])
    return send_from_directory(CHECKOUT / "node_modules" / path.parent, path.name, max_age=3600)


@bp.after_app_request
def security_headers(response):
    """The pages run only their own scripts (xterm.js styles itself inline)."""
    if request.path.startswith("/v2/"):
        return response
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; form-action 'self'")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    return response
