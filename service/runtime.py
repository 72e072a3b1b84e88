"""What the routes share at request time: limits, the worker pool, the loaded engine, request checks.

One :class:`Service` per app lives in ``app.state.service`` (set by the app's lifespan); a route
gets it with ``Depends(get_service)``.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from fastapi import HTTPException as FastAPIHTTPException, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile

from retrieval.image_io import DEFAULT_MAX_PIXELS

from .engine import RecognitionService

logger = logging.getLogger(__name__)


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
    max_pixels: int = DEFAULT_MAX_PIXELS  # (a RecognitionService handed to create_app keeps its own)
    # recent answers kept for /matches and /results, bounded in bytes (their features, a small JPEG of the query,
    # the match pictures drawn): the service's memory beyond the index and models stays flat under any traffic
    answer_cache_mb: float = 64.0  # (a RecognitionService handed to create_app keeps its own)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def to_json(self) -> dict[str, float]:
        return {"workers": self.workers, "max_upload_mb": self.max_upload_mb, "max_queue": self.max_queue,
                "max_batch_files": self.max_batch_files, "request_timeout_s": self.request_timeout_s,
                "max_in_progress": self.workers + self.max_queue}


class ServiceError(FastAPIHTTPException):
    """A 4xx/5xx answer with a one-line message."""


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=dict(headers or {}))


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


class Service:
    """One app's engine, limits and pool, and its one-at-a-time reload."""

    def __init__(self, engine: RecognitionService, limits: Limits, operator_auth: Any = None):
        self.engine = engine
        self.limits = limits
        self.operator_auth = operator_auth  # service.auth.OperatorAuth (what /health states)
        self.pool = Pool(limits)
        self._reload_task: asyncio.Future | None = None

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in the worker pool (503 when full, 504 past the time limit)."""
        return await self.pool.run(fn, *args)

    async def reload(self, reason: str) -> dict[str, Any]:
        # one reload at a time; callers during a reload share its outcome
        task = self._reload_task
        if task is None or task.done():
            logger.info("reloading the index (%s)", reason)
            task = asyncio.ensure_future(asyncio.to_thread(self.engine.reload))
            self._reload_task = task
        return await asyncio.shield(task)

    def shutdown(self) -> None:
        self.pool.shutdown()


def get_service(request: Request) -> Service:
    return request.app.state.service


# ----------------------------------------------------------------------------- request checks


def check_params(request: Request, allowed: set[str]) -> None:
    unknown = sorted(set(request.query_params) - allowed)
    if unknown:
        valid = ", ".join(sorted(allowed)) or "none"
        raise ServiceError(422, f"unknown parameter {unknown[0]!r}; valid: {valid}")


async def read_images(request: Request, max_files: int | None = None,
                      max_bytes: int = 20 * 2**20) -> list[tuple[str | None, bytes]]:
    """(file name, bytes) of the uploads in the multipart field ``image``: one, or 1..``max_files`` with ``max_files``.

    A part without a file name (``curl -F image=<photo.jpg``) is a photo too. Raises 422 for a missing or
    unknown field, 413 for too many files (a malformed multipart body is a 400 from Starlette).
    """
    form = await request.form(max_part_size=max_bytes)
    unknown = sorted(set(form.keys()) - {"image"})
    if unknown:
        raise ServiceError(422, f"unknown form field {unknown[0]!r}; send the photo as the field 'image'")
    uploads = form.getlist("image")
    if not uploads:
        raise ServiceError(422, "missing field 'image' (send the photo as multipart form field 'image')")
    if max_files is None and len(uploads) > 1:
        raise ServiceError(422, "send one photo as 'image' (several: POST /recognize/batch)")
    if max_files is not None and len(uploads) > max_files:
        # an invalid request (the document's maxItems), not a body over the size limit: 422 as for any other
        raise ServiceError(422, f"image: {len(uploads)} images in one batch; at most {max_files}")
    out = [(u.filename, await u.read()) if isinstance(u, UploadFile) else (None, _field_bytes(u)) for u in uploads]
    if max_files is not None:
        # an empty part breaks the document's minLength: the request is invalid (an unreadable photo is
        # that photo's error in the answer; nothing at all is a malformed request)
        empty = [i for i, (_, data) in enumerate(out) if not data]
        if empty:
            raise ServiceError(422, f"image: part {empty[0] + 1} of {len(out)} is empty (0 bytes)")
        # a part without a file name is a text field: a photo only when it is an image (curl -F image=<a.jpg);
        # other text (a number, JSON) is a field of the wrong type, not a photo that failed to decode
        text = [i for i, (name, data) in enumerate(out) if name is None and not _is_image(data)]
        if text:
            raise ServiceError(422, f"image: part {text[0] + 1} of {len(out)} is a text field, not a photo file")
    return out


def _is_image(data: bytes) -> bool:
    """Whether ``data`` starts like an image Pillow identifies (its header only: nothing is decoded)."""
    import io
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)):
                return True
    except Image.DecompressionBombError:
        return True  # an image, over Pillow's budget: the engine answers it (413 from the pixel budget)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return False


def _field_bytes(value: str) -> bytes:
    """The bytes of a multipart part that had no file name, which Starlette hands over decoded as text.

    Starlette decodes such a part as UTF-8, or as Latin-1 when it is not UTF-8 (every JPEG and PNG, whose
    first byte is never valid UTF-8); Latin-1 gives back the exact bytes.
    """
    try:
        raw = value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw  # not UTF-8: it was decoded as Latin-1
    return value.encode("utf-8")
