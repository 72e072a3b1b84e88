"""The service's OpenAPI contract: response bodies, error answers and upload bodies of every route.

The models document; the routes return the engine's dicts as they are (the JSON of the CLI's
``--json`` output), so a key added there appears in the service without a change here
(``extra="allow"``). Schemathesis checks the live service against this document
(``tests/test_service_schema.py``).
"""
from __future__ import annotations

from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from retrieval.image_io import DEFAULT_MIN_SIDE

IMAGE_TYPES = "image/jpeg, image/png"  # documented upload types (anything OpenCV/Pillow decodes is accepted)


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer: one line, never a trace or a server path."""

    error: str = Field(..., min_length=1, description="What was wrong, in one line")


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class CandidateBody(_Open):
    landmark_id: str
    landmark_name: Optional[str] = Field(None, description="The landmark's name when the index has names "
                                                           "(build-index --landmark-names); absent otherwise")
    vote: float
    inliers: int
    best_match_id: Optional[str]
    channels: list[str] = Field(default_factory=lambda: ["global"],
                                description="The retrieval channels that proposed the candidate: 'global' (the global kNN), "
                                            "'asmk' (local-feature retrieval, an index built with --asmk)")


class Recognition(_Open):
    """The object of ``landmarks recognize --json``."""

    image: str = Field(..., description="The upload's file name (base name only)")
    landmark_id: Optional[str] = Field(..., description="The landmark, or null for 'no landmark'")
    landmark_name: Optional[str] = Field(None, description="The landmark's name when the index has names "
                                                           "(build-index --landmark-names); absent otherwise")
    confidence: float
    inliers: int
    candidates: list[CandidateBody]


class ImageFailure(BaseModel):
    """A batch item whose upload is not a usable image (as the CLI reports an unreadable file)."""

    image: str
    error: str


class NeighbourRow(_Open):
    rank: int = Field(..., ge=1)
    id: str
    landmark_id: Optional[str] = Field(..., description="null for a non-landmark reference")
    landmark_name: Optional[str] = Field(None, description="The landmark's name when the index has names "
                                                           "(build-index --landmark-names); absent otherwise")
    score: float
    path: str
    channel: str = Field("global", description="The retrieval channel that found the image: 'global' (the global kNN)")


class Neighbours(_Open):
    """The object of ``landmarks query --json``."""

    image: str
    neighbours: list[NeighbourRow]


class Result(_Open):
    request_id: str
    recognition: Recognition
    neighbours: list[NeighbourRow]
    matches: str = Field(..., description="URL of the match picture")


class Health(_Open):
    status: str
    version: str
    index: str
    index_id: Optional[str]
    images: int = Field(..., ge=0)
    landmarks: Optional[int]
    configs: dict[str, Any]
    inlier_threshold: float
    reloads: int = Field(..., ge=0)
    open_snapshots: int = Field(..., ge=1, description="Index snapshots with open files (1 when no reload is finishing)")
    global_batches: dict[str, int]


class HealthWithLimits(Health):
    limits: dict[str, Union[float, str]]


class Reloaded(Health):
    reloaded: bool
    previous_index_id: Optional[str]


BatchItem = Union[Recognition, ImageFailure]


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the error answers a route gives, each with the error body."""
    why = {
        400: "The upload is not a usable image (empty, truncated, not an image, too many pixels) or the form is malformed",
        401: "Operator route without 'Authorization: Bearer <token>' (the service has an operator token)",
        403: "Operator route with a wrong token, or disabled (bound beyond localhost without a token)",
        404: "Unknown or expired id",
        413: "Request body over the upload limit, or an image over the pixel budget (serve --max-pixels)",
        422: "Invalid request: missing or unknown field or parameter, parameter out of range, too many or empty "
             "photos in a batch",
        500: "Internal error (logged on the server)",
        503: "Server busy (retry after the Retry-After seconds), or a reload failed and the previous index is still served",
        504: "The request took longer than the server's time limit",
    }
    out: dict[int | str, dict[str, Any]] = {s: {"model": ErrorBody, "description": why[s]} for s in statuses}
    if 503 in out:
        out[503]["headers"] = {"Retry-After": {"schema": {"type": "string"}, "description": "Seconds to wait (when busy)"}}
    return out


# what every route may answer: a malformed parameter (422), an internal error (500)
COMMON_ERRORS = (422, 500)
# what a route that runs in the worker pool also answers
POOL_ERRORS = (503, 504)


def upload_body(many: bool, max_files: int) -> dict[str, Any]:
    """``openapi_extra`` of an upload route: a multipart body whose field ``image`` holds one photo (or 1..max_files)."""
    photo = {"type": "string", "format": "binary", "minLength": 1,
             "description": f"The photo (JPEG, PNG, or another format OpenCV/Pillow decodes), not empty. Any size "
                            f"within the pixel budget: a photo whose shorter side is under {DEFAULT_MIN_SIDE} px is "
                            f"enlarged to it first (nearest neighbour; the answer says `enlarged_from`), an "
                            f"unreadable one is answered 400"}
    image = ({"type": "array", "items": photo, "minItems": 1, "maxItems": max_files,
              "description": f"The photos, the field repeated, 1 to {max_files}"} if many else photo)
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "required": ["image"], "properties": {"image": image},
                               "additionalProperties": False},
                    "encoding": {"image": {"contentType": IMAGE_TYPES}},
                }
            },
        }
    }
