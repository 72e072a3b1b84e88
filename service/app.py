"""``landmarks serve``: the recognition service (FastAPI on uvicorn) and its web page.

Endpoints (JSON unless said otherwise; errors are ``{"error": "<one line>"}`` with a 4xx status):

- ``POST /recognize`` (form field ``image``): the object of ``recognize --json``; header
  ``X-Request-Id`` names the answer for ``/matches/<id>.png`` and ``/results/<id>``.
- ``POST /recognize/batch`` (``image`` repeated): a list of those objects in upload order (an
  unreadable image gets ``{"image", "error"}`` as in the CLI); header ``X-Request-Ids``.
- ``POST /neighbours?k=10``: the object of ``query --json``.
- ``GET /matches/<id>.png``: the match picture of an answer (``show-matches`` rendering).
- ``GET /results/<id>``: an answer with its nearest reference images.
- ``GET /thumbnails/<reference id>``: a JPEG of a reference image, looked up by id in the index.
- ``GET /health``, ``POST /reload`` (or SIGHUP), ``GET /`` (the page), ``GET /docs`` (OpenAPI).

CPU work runs in a bounded thread pool off the event loop; requests beyond the pool and its
queue are refused with 503 at once, and each has a time limit (504), so ``/health`` always answers.

This module only assembles the app: the routes live in ``service/routes/`` (one ``APIRouter`` each),
what they share at request time in ``service/runtime.py``, the OpenAPI contract (every answer and
constraint) in ``service/schemas.py``, recognition itself in ``service/engine.py``.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path
from typing import Any, Callable, Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException

from .auth import SCHEME, OperatorAuth
from .engine import RecognitionService
from .routes import admin, answers, recognition
from .runtime import Limits, Service, ServiceError, error_response

__all__ = ["Limits", "ServiceError", "create_app", "serve"]

logger = logging.getLogger(__name__)


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``max_bytes`` (413) before and while they are read."""

    def __init__(self, app: Callable, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit_mb = self.max_bytes / 1024 / 1024
        message = f"request body over the upload limit of {limit_mb:g} MB"
        for key, value in scope.get("headers", []):
            if key == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    too_big = False
                if too_big:
                    return await error_response(413, message)(scope, receive, send)
        received = 0

        async def limited_receive():
            nonlocal received
            msg = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                if received > self.max_bytes:
                    raise ServiceError(413, message)
            return msg

        await self.app(scope, limited_receive, send)


def _validation_message(exc: RequestValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return "invalid request"
    err = errors[0]
    loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query")]
    where = ".".join(loc) or "request"
    if err.get("type") == "missing":
        return f"missing field {where!r} (send the photo as multipart form field 'image')" if where == "image" \
            else f"missing field {where!r}"
    return f"{where}: {err.get('msg', 'invalid')}"


def create_app(index_dir: str | Path | None = None, limits: Limits | None = None, device: str | None = None,
               overrides: Mapping[str, Any] | None = None, handle_sighup: bool = False,
               engine: RecognitionService | None = None, operator_auth: OperatorAuth | None = None) -> FastAPI:
    """The ASGI app for one index: the routers, the body limit, one-line errors. The index and models load
    at start-up (lifespan), once.

    ``engine``: an already loaded :class:`RecognitionService` to serve instead of ``index_dir`` (it is not
    closed at shutdown; tests share one between apps with different limits). ``operator_auth``: who may call
    ``POST /reload`` (default: anyone, as for a service bound to localhost; :func:`serve` derives it from the bind).
    """
    limits = limits or Limits()
    operator_auth = operator_auth or OperatorAuth()
    if (index_dir is None) == (engine is None):
        raise ValueError("give index_dir or engine")
    given = engine

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        engine = given or await asyncio.to_thread(RecognitionService, index_dir, device, overrides, limits.max_global_batch,
                                                  max_pixels=limits.max_pixels, answer_cache_mb=limits.answer_cache_mb)
        service = app.state.service = Service(engine, limits, operator_auth)
        if handle_sighup and hasattr(signal, "SIGHUP"):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                asyncio.get_running_loop().add_signal_handler(
                    signal.SIGHUP, lambda: asyncio.ensure_future(_reload_on_sighup(service)))
        logger.info("serving %s", engine.index_dir)
        try:
            yield
        finally:
            service.shutdown()
            if given is None:
                engine.close()

    # FastAPIOffline: FastAPI whose /docs and /redoc load Swagger UI and ReDoc from the installed package, not a CDN
    app = FastAPIOffline(
        title="landmarks",
        version=_version(),
        summary="Landmark recognition by retrieval: upload a photo, get the landmark (or 'no landmark') and its evidence.",
        lifespan=lifespan,
        generate_unique_id_function=lambda route: route.name,  # operationIds: recognize, result, matches, ...
    )
    app.state.operator_auth = operator_auth
    if operator_auth.required:
        _declare_operator_security(app)
    app.add_middleware(BodyLimit, max_bytes=limits.max_upload_bytes)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _internal_error)
    app.include_router(admin.router)
    app.include_router(recognition.make_router(limits.max_batch_files))
    app.include_router(answers.router)
    return app


def _declare_operator_security(app: FastAPI) -> None:
    """Declare the bearer token on the operator routes of the OpenAPI document (only when one is required)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = build()
            spec.setdefault("components", {}).setdefault("securitySchemes", {})[SCHEME] = {
                "type": "http", "scheme": "bearer",
                "description": "The operator token (serve --operator-token or $LANDMARKS_OPERATOR_TOKEN)"}
            for path, method in admin.OPERATOR_ROUTES:
                spec["paths"][path][method]["security"] = [{SCHEME: []}]
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


# ----------------------------------------------------------------------------- errors: one line, never a trace


async def _http_error(request: Request, exc: HTTPException):
    return error_response(exc.status_code, str(exc.detail), getattr(exc, "headers", None))


async def _validation_error(request: Request, exc: RequestValidationError):
    return error_response(422, _validation_message(exc))


async def _internal_error(request: Request, exc: Exception):
    logger.exception("internal error on %s %s", request.method, request.url.path)
    return error_response(500, f"internal error ({type(exc).__name__}); see the server log")


async def _reload_on_sighup(service: Service) -> None:
    try:
        await service.reload("SIGHUP")
    except Exception as exc:  # noqa: BLE001 - a failed reload keeps the old index; say why
        logger.error("reload failed, still serving the previous index: %s", exc)


def _version() -> str:
    from index.manifest import package_version

    return package_version()


def serve(index_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, limits: Limits | None = None,
          device: str | None = None, overrides: Mapping[str, Any] | None = None,
          operator_token: str | None = None) -> None:
    """Run the service until interrupted (what ``landmarks serve`` calls).

    The index and models are loaded before the server starts, so a bad index is one error line, not a trace.
    ``operator_token`` (else ``$LANDMARKS_OPERATOR_TOKEN``): the bearer token of ``POST /reload``; without one,
    ``/reload`` is open on a localhost bind and refused (403) on any other (``service/auth.py``).
    """
    import uvicorn

    limits = limits or Limits()
    operator_auth = OperatorAuth.for_bind(host, operator_token)
    if not operator_auth.required and not operator_auth.open:
        logger.warning("binding %s without an operator token: POST /reload is refused (SIGHUP reloads)", host)
    engine = RecognitionService(index_dir, device, overrides, limits.max_global_batch, max_pixels=limits.max_pixels,
                    answer_cache_mb=limits.answer_cache_mb)
    try:
        app = create_app(limits=limits, handle_sighup=True, engine=engine, operator_auth=operator_auth)
        uvicorn.run(
            app, host=host, port=port,
            log_level="info" if logging.getLogger().getEffectiveLevel() <= logging.INFO else "warning",
            # connections beyond this get 503 from uvicorn itself; idle keep-alive connections close after 5 s
            limit_concurrency=limits.workers + limits.max_queue + 64, timeout_keep_alive=5,
            timeout_graceful_shutdown=10, server_header=False,
        )
    finally:
        engine.close()
