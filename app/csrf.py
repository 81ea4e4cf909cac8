"""CSRF protection for the forms: a secret token in the session, checked on every POST.

The registry (/v2/) is exempt: its clients are docker and skopeo with Basic credentials,
not browsers with cookies. Socket.IO is protected by its origin check instead.
"""
from __future__ import annotations

import hmac
import secrets

from flask import abort, request, session


def csrf_token() -> str:
    token = session.get("csrf")
    if not isinstance(token, str) or len(token) != 43:
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


def check_csrf():
    if request.method in ("GET", "HEAD", "OPTIONS") or request.path.startswith(("/v2/", "/socket.io/")):
        return None
    sent = request.form.get("csrf_token") or request.headers.get("X-CSRF-Token") or ""
    expected = session.get("csrf")
    if not isinstance(expected, str) or not hmac.compare_digest(sent, expected):
        abort(400, "the form's security token is missing or stale: reload the page and try again")
    return None


def init_app(app) -> None:
    app.before_request(check_csrf)
