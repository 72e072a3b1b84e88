"""The operator token: who may call the routes that change what is served (``POST /reload``).

Recognition routes stay open. Operator routes are

- open when the service binds to this machine only (127.0.0.1, ::1, localhost) and no token is set;
- refused (403, saying how to enable them) when it binds beyond localhost without a token: anyone who
  reaches the port must not be able to reopen the index;
- guarded by ``Authorization: Bearer <token>`` once a token is set (``serve --operator-token`` or
  ``$LANDMARKS_OPERATOR_TOKEN``): 401 without it, 403 with another one.

The OpenAPI document declares the bearer scheme on an operator route only when a token is required, so
the document says what this server does (a client's fuzzer checks that an unauthenticated call is refused).
"""
from __future__ import annotations

import hmac
import ipaddress
import os
from dataclasses import dataclass

from fastapi import Request

from .runtime import ServiceError

TOKEN_ENV = "LANDMARKS_OPERATOR_TOKEN"
SCHEME = "operatorToken"  # the securitySchemes entry of the OpenAPI document
MIN_TOKEN_CHARS = 16  # a short token is guessed: refuse to start with one


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the service on this machine (0.0.0.0 and :: bind every address)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to any address


@dataclass(frozen=True)
class OperatorAuth:
    """The operator-route policy of one service (see the module docstring)."""

    token: str | None = None  # the bearer token operator routes require (None: see ``open``)
    open: bool = True  # without a token: operator routes open (loopback bind) or refused (beyond localhost)

    @classmethod
    def for_bind(cls, host: str, token: str | None = None) -> OperatorAuth:
        """The policy for a service bound to ``host``; ``token`` (else ``$LANDMARKS_OPERATOR_TOKEN``) when set.

        Raises ValueError for a token shorter than ``MIN_TOKEN_CHARS`` characters.
        """
        token = token if token is not None else (os.environ.get(TOKEN_ENV) or None)
        if token is not None and len(token.strip()) < MIN_TOKEN_CHARS:
            raise ValueError(f"the operator token must have at least {MIN_TOKEN_CHARS} characters "
                             f"(e.g. `python -c 'import secrets; print(secrets.token_urlsafe())'`)")
        return cls(token=token.strip() if token else None, open=is_loopback(host))

    @property
    def required(self) -> bool:
        """Whether an operator route needs the bearer token (what the OpenAPI document declares)."""
        return self.token is not None

    def to_json(self) -> dict[str, str]:
        mode = "token" if self.token else "open (localhost)" if self.open else "disabled (no token, not localhost)"
        return {"operator_routes": mode}

    def check(self, request: Request) -> None:
        """Raise 401/403 (one line) unless ``request`` may call an operator route."""
        if self.token is None:
            if self.open:
                return
            raise ServiceError(403, f"operator routes are disabled: the service binds beyond localhost without a "
                                    f"token (start it with --operator-token or ${TOKEN_ENV}; SIGHUP still reloads)")
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise ServiceError(401, "operator route: send 'Authorization: Bearer <token>'",
                               {"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(given.strip().encode(), self.token.encode()):
            raise ServiceError(403, "operator route: wrong token")


def require_operator(request: Request) -> None:
    """Route dependency of operator routes: the app's :class:`OperatorAuth` decides."""
    auth: OperatorAuth = getattr(request.app.state, "operator_auth", None) or OperatorAuth()
    auth.check(request)
