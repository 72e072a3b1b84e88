"""Routes that take photos: ``POST /recognize``, ``POST /recognize/batch``, ``POST /neighbours``."""
from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from ..engine import MAX_K, BadImage, clean_name
from ..runtime import Service, ServiceError, check_params, get_service, read_images
from ..schemas import (COMMON_ERRORS, POOL_ERRORS, BatchItem, Neighbours, Recognition, errors, upload_body)


def make_router(max_batch_files: int) -> APIRouter:
    """The photo routes; a batch holds 1 to ``max_batch_files`` photos (documented in the OpenAPI body)."""
    router = APIRouter(tags=["recognition"])

    @router.post(
        "/recognize", summary="Recognise one photo (JSON as `landmarks recognize --json`)",
        response_model=None, openapi_extra=upload_body(many=False, max_files=1),
        responses={
            200: {"model": Recognition, "description": "The answer; header X-Request-Id names it for /matches and /results",
                  "headers": {"X-Request-Id": {"schema": {"type": "string"}, "description": "The answer's id"},
                              "Link": {"schema": {"type": "string"}, "description": "The match picture's URL"}},
                  "links": {
                      "result": {"operationId": "result", "parameters": {"rid": "$response.header.X-Request-Id"},
                                 "description": "The answer with its nearest references"},
                      "matches": {"operationId": "matches", "parameters": {"rid": "$response.header.X-Request-Id"},
                                  "description": "The answer's match picture"},
                  }},
            **errors(400, 413, *COMMON_ERRORS, *POOL_ERRORS),
        },
    )
    async def recognize(request: Request, svc: Service = Depends(get_service)) -> JSONResponse:
        check_params(request, set())
        ((filename, data),) = await read_images(request, max_bytes=svc.limits.max_upload_bytes)
        try:
            rid, obj = await svc.run(svc.engine.recognize, data, filename)
        except BadImage as exc:
            raise ServiceError(exc.status, str(exc)) from None
        return JSONResponse(obj, headers={"X-Request-Id": rid, "Link": f'</matches/{rid}.png>; rel="matches"'})

    @router.post(
        "/recognize/batch", summary="Recognise several photos (a list of `recognize --json` objects)",
        response_model=None, openapi_extra=upload_body(many=True, max_files=max_batch_files),
        responses={
            200: {"model": list[BatchItem],
                  "description": "One object per photo in upload order; an unusable image gets {image, error}",
                  "headers": {"X-Request-Ids": {"schema": {"type": "string"},
                                                "description": "The answers' ids, comma-separated (empty for a failed image)"}}},
            **errors(400, 413, *COMMON_ERRORS, *POOL_ERRORS),
        },
    )
    async def recognize_batch(request: Request, svc: Service = Depends(get_service)) -> JSONResponse:
        check_params(request, set())
        uploads = await read_images(request, max_files=max_batch_files, max_bytes=svc.limits.max_upload_bytes)

        async def one(name: str | None, data: bytes) -> tuple[str, dict[str, Any]]:
            try:
                return await svc.run(svc.engine.recognize, data, name)
            except BadImage as exc:
                return "", {"image": clean_name(name), "error": str(exc)}

        results = await asyncio.gather(*(one(name, data) for name, data in uploads))
        return JSONResponse([obj for _, obj in results], headers={"X-Request-Ids": ",".join(r for r, _ in results)})

    @router.post(
        "/neighbours", summary="Nearest reference images (JSON as `landmarks query --json`)",
        response_model=None, openapi_extra=upload_body(many=False, max_files=1),
        responses={200: {"model": Neighbours, "description": "The k nearest references, nearest first",
                         "links": {"thumbnail": {"operationId": "thumbnail",
                                                 "parameters": {"ref_id": "$response.body#/neighbours/0/id"},
                                                 "description": "A thumbnail of the nearest reference"}}},
                   **errors(400, 413, *COMMON_ERRORS, *POOL_ERRORS)},
    )
    async def neighbours(request: Request, k: int = Query(10, ge=1, le=MAX_K, description="Number of neighbours"),
                         svc: Service = Depends(get_service)) -> Any:
        check_params(request, {"k"})
        ((filename, data),) = await read_images(request, max_bytes=svc.limits.max_upload_bytes)
        try:
            return await svc.run(svc.engine.neighbours, data, filename, k)
        except BadImage as exc:
            raise ServiceError(exc.status, str(exc)) from None

    return router
