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
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Mapping

from fastapi import FastAPI, File, HTTPException as FastAPIHTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException

from retrieval.image_io import DEFAULT_MAX_PIXELS

from .engine import MAX_K, BadImage, Engine, UnknownResult, clean_name

logger = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"


@dataclass
class Limits:
    """What one service process accepts (all overridable from ``landmarks serve``)."""

    workers: int = 4  # recognition threads (the bounded pool); the model and index are loaded once
    max_upload_mb: float = 20.0  # request body limit (all images of a request together)
    max_queue: int = 32  # requests waiting for a worker beyond the running ones; more get 503
    max_batch_files: int = 32  # images per /recognize/batch request
    request_timeout_s: float = 60.0  # a request still unanswered after this gets 504
    max_global_batch: int | None = None  # images the global model describes together (None: 8 on GPU, 1 on CPU)
    # pixel budget of one upload, checked from its header before decoding (413 above it): a PNG has no
    # reduced decoding, so a 194 kB 13,000 x 13,000 one would otherwise cost a gigabyte and seconds of CPU
    max_pixels: int = DEFAULT_MAX_PIXELS  # (an Engine handed to create_app keeps its own)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


class ServiceError(FastAPIHTTPException):
    """A 4xx/5xx answer with a one-line message."""


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=dict(headers or {}))


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
                    return await _error(413, message)(scope, receive, send)
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


class Pool:
    """A bounded thread pool with admission control: at most ``workers + max_queue`` requests inside."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.executor = ThreadPoolExecutor(max_workers=limits.workers, thread_name_prefix="recognize")
        self.slots = threading.BoundedSemaphore(limits.workers + limits.max_queue)

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        if not self.slots.acquire(blocking=False):
            raise ServiceError(503, "server busy: too many requests in progress; retry shortly", {"Retry-After": "1"})
        try:
            fut = self.executor.submit(fn, *args)
        except BaseException:
            self.slots.release()
            raise
        fut.add_done_callback(lambda _: self.slots.release())  # the slot is freed when the work ends, not at a timeout
        try:
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(fut)), self.limits.request_timeout_s)
        except asyncio.TimeoutError:
            raise ServiceError(504, f"request took longer than {self.limits.request_timeout_s:g} s") from None

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def _check_params(request: Request, allowed: set[str]) -> None:
    unknown = sorted(set(request.query_params) - allowed)
    if unknown:
        valid = ", ".join(sorted(allowed)) or "none"
        raise ServiceError(422, f"unknown parameter {unknown[0]!r}; valid: {valid}")


async def _check_form(request: Request) -> None:
    form = await request.form()
    unknown = sorted(set(form.keys()) - {"image"})
    if unknown:
        raise ServiceError(422, f"unknown form field {unknown[0]!r}; send the photo as the field 'image'")


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
               engine: Engine | None = None) -> FastAPI:
    """The ASGI app for one index. The index and models load at start-up (lifespan), once.

    ``engine``: an already loaded :class:`Engine` to serve instead of ``index_dir`` (it is not
    closed at shutdown; tests share one between apps with different limits).
    """
    limits = limits or Limits()
    holder: dict[str, Any] = {}
    if (index_dir is None) == (engine is None):
        raise ValueError("give index_dir or engine")
    given = engine

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        engine = given or await asyncio.to_thread(Engine, index_dir, device, overrides, limits.max_global_batch,
                                                  max_pixels=limits.max_pixels)
        pool = Pool(limits)
        holder.update(engine=engine, pool=pool, reload_task=None)
        loop = asyncio.get_running_loop()
        if handle_sighup and hasattr(signal, "SIGHUP"):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(_sighup()))
        logger.info("serving %s (%d images)", engine.index_dir, engine.state.rec.db.size)
        try:
            yield
        finally:
            pool.shutdown()
            if given is None:
                engine.close()

    # FastAPIOffline: FastAPI whose /docs and /redoc load Swagger UI and ReDoc from the installed package, not a CDN
    app = FastAPIOffline(
        title="landmarks",
        version=_version(),
        summary="Landmark recognition by retrieval: upload a photo, get the landmark (or 'no landmark') and its evidence.",
        lifespan=lifespan,
    )
    app.add_middleware(BodyLimit, max_bytes=limits.max_upload_bytes)
    page = (STATIC / "index.html").read_text(encoding="utf-8")

    # ------------------------------------------------------------------ errors: one line, never a trace

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException):
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        return _error(422, _validation_message(exc))

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception):
        logger.exception("internal error on %s %s", request.method, request.url.path)
        return _error(500, f"internal error ({type(exc).__name__}); see the server log")

    def engine() -> Engine:
        return holder["engine"]

    async def run(fn: Callable[..., Any], *args: Any) -> Any:
        return await holder["pool"].run(fn, *args)

    async def _read(upload: UploadFile) -> bytes:
        return await upload.read()

    async def _reload(reason: str) -> dict[str, Any]:
        # one reload at a time; callers during a reload share its outcome
        task = holder.get("reload_task")
        if task is None or task.done():
            logger.info("reloading the index (%s)", reason)
            task = asyncio.ensure_future(asyncio.to_thread(engine().reload))
            holder["reload_task"] = task
        return await asyncio.shield(task)

    async def _sighup() -> None:
        try:
            await _reload("SIGHUP")
        except Exception as exc:  # noqa: BLE001 - a failed reload keeps the old index; say why
            logger.error("reload failed, still serving the previous index: %s", exc)

    # ------------------------------------------------------------------ routes

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index_page(request: Request):
        _check_params(request, set())
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    @app.get("/health", summary="Index size, index_id, configurations, threshold, version")
    async def health(request: Request) -> dict:
        _check_params(request, set())
        out = engine().health()
        out["limits"] = {
            "workers": limits.workers, "max_upload_mb": limits.max_upload_mb, "max_queue": limits.max_queue,
            "max_batch_files": limits.max_batch_files, "request_timeout_s": limits.request_timeout_s,
            "max_pixels": engine().max_pixels,
        }
        return out

    @app.post("/recognize", summary="Recognise one photo (JSON as `landmarks recognize --json`)")
    async def recognize(request: Request, image: UploadFile = File(..., description="The photo (JPEG, PNG, ...)")):
        _check_params(request, set())
        await _check_form(request)
        if len((await request.form()).getlist("image")) > 1:
            raise ServiceError(422, "send one photo as 'image' (several: POST /recognize/batch)")
        data = await _read(image)
        try:
            rid, obj = await run(engine().recognize, data, image.filename)
        except BadImage as exc:
            raise ServiceError(exc.status, str(exc)) from None
        return JSONResponse(obj, headers={"X-Request-Id": rid, "Link": f'</matches/{rid}.png>; rel="matches"'})

    @app.post("/recognize/batch", summary="Recognise several photos (a list of `recognize --json` objects)")
    async def recognize_batch(request: Request, image: List[UploadFile] = File(..., description="Photos, the field repeated")):
        _check_params(request, set())
        await _check_form(request)
        if len(image) > limits.max_batch_files:
            raise ServiceError(413, f"{len(image)} images in one batch; at most {limits.max_batch_files}")
        datas = [await _read(u) for u in image]

        async def one(data: bytes, name: str | None):
            try:
                return await run(engine().recognize, data, name)
            except BadImage as exc:
                return "", {"image": clean_name(name), "error": str(exc)}

        results = await asyncio.gather(*(one(d, u.filename) for d, u in zip(datas, image)))
        return JSONResponse([obj for _, obj in results], headers={"X-Request-Ids": ",".join(r for r, _ in results)})

    @app.post("/neighbours", summary="Nearest reference images (JSON as `landmarks query --json`)")
    async def neighbours(request: Request, image: UploadFile = File(...),
                         k: int = Query(10, ge=1, le=MAX_K, description="Number of neighbours")):
        _check_params(request, {"k"})
        await _check_form(request)
        data = await _read(image)
        try:
            return await run(engine().neighbours, data, image.filename, k)
        except BadImage as exc:
            raise ServiceError(exc.status, str(exc)) from None

    @app.get("/matches/{rid}.png", summary="The match picture of a recognize answer (as `show-matches`)",
             response_class=Response, responses={200: {"content": {"image/png": {}}}})
    async def matches(request: Request, rid: str,
                      candidates: int = Query(3, ge=1, le=10, description="Candidates drawn, the answer first")):
        _check_params(request, {"candidates"})
        try:
            png = await run(engine().matches_png, rid, candidates)
        except UnknownResult:
            raise ServiceError(404, f"no answer {rid!r} (unknown or expired: recent answers are kept)") from None
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/results/{rid}", summary="A recent recognize answer with its nearest reference images")
    async def result(request: Request, rid: str, k: int = Query(12, ge=1, le=100)):
        _check_params(request, {"k"})
        try:
            return engine().result(rid, k)
        except UnknownResult:
            raise ServiceError(404, f"no answer {rid!r} (unknown or expired: recent answers are kept)") from None

    @app.get("/thumbnails/{ref_id:path}", summary="A thumbnail of a reference image, by its id in the index",
             response_class=Response, responses={200: {"content": {"image/jpeg": {}}}})
    async def thumbnail(request: Request, ref_id: str):
        _check_params(request, set())
        # The id is looked up in the index's metadata; the request never names a file.
        data = await run(engine().thumbnail, ref_id)
        if data is None:
            raise ServiceError(404, f"no reference image with id {ref_id!r} in the index")
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "public, max-age=3600"})

    @app.post("/reload", summary="Reopen the index (after build-index or tune-threshold); SIGHUP does the same")
    async def reload(request: Request):
        _check_params(request, set())
        try:
            return await _reload("POST /reload")
        except (ValueError, OSError) as exc:
            raise ServiceError(503, f"reload failed, still serving the previous index: {exc}") from None

    return app


def _version() -> str:
    from index.manifest import package_version

    return package_version()


def serve(index_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, limits: Limits | None = None,
          device: str | None = None, overrides: Mapping[str, Any] | None = None) -> None:
    """Run the service until interrupted (what ``landmarks serve`` calls).

    The index and models are loaded before the server starts, so a bad index is one error line, not a trace.
    """
    import uvicorn

    limits = limits or Limits()
    index_dir = Path(index_dir)
    if not (index_dir / "manifest.json").exists():
        raise FileNotFoundError(f"{index_dir} is not an index directory (no manifest.json); build it with build-index")
    engine = Engine(index_dir, device, overrides, limits.max_global_batch, max_pixels=limits.max_pixels)
    try:
        app = create_app(limits=limits, handle_sighup=True, engine=engine)
        uvicorn.run(
            app, host=host, port=port,
            log_level="info" if logging.getLogger().getEffectiveLevel() <= logging.INFO else "warning",
            # connections beyond this get 503 from uvicorn itself; idle keep-alive connections close after 5 s
            limit_concurrency=limits.workers + limits.max_queue + 64, timeout_keep_alive=5,
            timeout_graceful_shutdown=10, server_header=False,
        )
    finally:
        engine.close()
