"""Routes that read what an answer or the index holds: match pictures, results, thumbnails."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from ..engine import UnknownResult
from ..runtime import Service, ServiceError, check_params, get_service
from ..schemas import COMMON_ERRORS, POOL_ERRORS, Result, errors

router = APIRouter(tags=["answers"])

RID = "a request id from the X-Request-Id header of POST /recognize"


def _unknown(rid: str) -> ServiceError:
    return ServiceError(404, f"no answer {rid!r} (unknown or expired: recent answers are kept)")


@router.get(
    "/matches/{rid}.png", summary="The match picture of a recognize answer (as `show-matches`)",
    response_class=Response,
    responses={200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
                     "description": "PNG: the photo beside each candidate's best reference, inliers as lines"},
               **errors(404, *COMMON_ERRORS, *POOL_ERRORS)},
)
async def matches(request: Request, rid: str, svc: Service = Depends(get_service),
                  candidates: int = Query(3, ge=1, le=10, description="Candidates drawn, the answer first")) -> Response:
    check_params(request, {"candidates"})
    try:
        png = await svc.run(svc.engine.matches_png, rid, candidates)
    except UnknownResult:
        raise _unknown(rid) from None
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})


@router.get(
    "/results/{rid}", summary="A recent recognize answer with its nearest reference images",
    response_model=None,
    responses={200: {"model": Result, "description": "The answer and its nearest references"}, **errors(404, *COMMON_ERRORS)},
)
async def result(request: Request, rid: str, svc: Service = Depends(get_service),
                 k: int = Query(12, ge=1, le=100, description="Number of neighbours")) -> Any:
    check_params(request, {"k"})
    try:
        return svc.engine.result(rid, k)
    except UnknownResult:
        raise _unknown(rid) from None


@router.get(
    "/thumbnails/{ref_id:path}", summary="A thumbnail of a reference image, by its id in the index",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
                     "description": "JPEG, longer side at most 256 px"},
               **errors(404, *COMMON_ERRORS, *POOL_ERRORS)},
)
async def thumbnail(request: Request, ref_id: str, svc: Service = Depends(get_service)) -> Response:
    check_params(request, set())
    # The id is looked up in the index's metadata; the request never names a file.
    data = await svc.run(svc.engine.thumbnail, ref_id)
    if data is None:
        raise ServiceError(404, f"no reference image with id {ref_id!r} in the index")
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "public, max-age=3600"})
