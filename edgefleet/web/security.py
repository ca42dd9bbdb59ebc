"""Who may change a fleet from the dashboard, and what every response carries.

Writes (promote, roll back) are POST only and need three things:

- the **write token** of the dashboard's configuration, compared in constant time
  (:func:`hmac.compare_digest`): from the ``X-Edgefleet-Token`` header (or ``Authorization:
  Bearer``) for the JSON API, from the ``token`` field of a page's form. Never from a
  cookie, which a browser would attach to a forged request on its own;
- for forms, the **CSRF token** of the session (a random value kept in the signed session
  cookie and echoed in a hidden field: another site can make the browser send the cookie,
  but cannot read the page to learn the field);
- a same-origin request: an ``Origin`` (or, failing that, ``Referer``) header naming this
  very host. A form POST without either is refused; a JSON API call from a script that
  sends neither (curl) is let through on its token alone.

The session cookie is ``SameSite=Strict`` and ``HttpOnly``. The Host header must be one of
the trusted host names (Flask's ``TRUSTED_HOSTS``, loopback by default), which stops DNS
rebinding: a page on ``evil.example`` that resolves to 127.0.0.1 is answered with 400.

Every response carries a Content-Security-Policy without inline scripts or styles (the
pages' scripts are files under ``static/``; ``'wasm-unsafe-eval'`` lets onnxruntime-web
compile its WebAssembly and nothing else), ``X-Content-Type-Options: nosniff``,
``X-Frame-Options: DENY`` and ``Referrer-Policy: same-origin``. Data reach the pages only
through Jinja's autoescaping and, in scripts, ``textContent`` and DOM attributes.
"""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import urlsplit

from flask import Flask, Request, Response, abort, session

TOKEN_HEADER = "X-Edgefleet-Token"
CSRF_FIELD = "csrf_token"
TOKEN_FIELD = "token"
_SESSION_KEY = "csrf"

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self' 'wasm-unsafe-eval'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)


def csrf_token() -> str:
    """This session's CSRF token, created on first use."""
    token = session.get(_SESSION_KEY)
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session[_SESSION_KEY] = token
    return token


def _same(given: str | None, expected: str | None) -> bool:
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def _host_of(url: str) -> str | None:
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return None
    return parts.netloc.lower()


def check_same_origin(request: Request, *, required: bool) -> None:
    """403 unless the request's Origin (or Referer) is this host; with ``required``, also
    403 when the request carries neither. Host and port are compared, not the scheme: behind
    a proxy that ends TLS the browser says https while this server sees http."""
    own = request.host.lower()
    origin = request.headers.get("Origin")
    if origin is not None:
        # "null" is what a sandboxed frame or a file:// page sends: never this dashboard.
        if _host_of(origin) != own:
            abort(403, description=f"cross-site request refused (Origin {origin})")
        return
    referer = request.headers.get("Referer")
    if referer is not None:
        if _host_of(referer) != own:
            abort(403, description="cross-site request refused (Referer from another site)")
        return
    if required:
        abort(403, description="request refused: it does not say which page sent it (Origin)")


def check_write_token(expected: str | None, given: str | None) -> None:
    if expected is None:
        abort(
            403,
            description="this dashboard is read-only: start it with a write token to change "
            "rollouts",
        )
    if not _same(given, expected):
        abort(403, description="wrong or missing write token")


def require_form_write(request: Request, expected_token: str | None) -> None:
    """The checks of a write from a page's form (see the module docstring)."""
    check_same_origin(request, required=True)
    if not _same(request.form.get(CSRF_FIELD), session.get(_SESSION_KEY)):
        abort(403, description="the form's CSRF token is missing or stale: reload the page")
    check_write_token(expected_token, request.form.get(TOKEN_FIELD))


def require_api_write(request: Request, expected_token: str | None) -> None:
    """The checks of a write through the JSON API (see the module docstring)."""
    check_same_origin(request, required=False)
    given = request.headers.get(TOKEN_HEADER)
    if given is None:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        given = value.strip() if scheme.lower() == "bearer" else None
    check_write_token(expected_token, given)


def add_security_headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
    return response


def install(app: Flask) -> None:
    app.config.update(
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_NAME="edgefleet_session",
    )
    app.after_request(add_security_headers)
    app.jinja_env.globals["csrf_token"] = csrf_token
