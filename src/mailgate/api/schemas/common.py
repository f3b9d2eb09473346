"""Bodies shared by every resource: problems and pages."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Problem(BaseModel):
    """RFC 9457 problem details; ``type`` is stable and safe to branch on."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(examples=["urn:mailgate:problem:not-found"])
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    request_id: str | None = None
    errors: list[dict[str, Any]] | None = None


PROBLEM_CONTENT = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the error statuses a route can answer."""
    text = {
        400: "Malformed request",
        401: "Missing, malformed, unknown or revoked API key",
        403: "The key lacks a required scope",
        404: "No such object for this tenant",
        409: "Conflicts with an existing object",
        413: "The request body is larger than `http.max_body_size`",
        415: "The Content-Type is not one the route accepts",
        422: "The body or parameters failed validation",
        503: "A dependency (database) is unavailable",
    }
    return {s: {"description": text[s], "content": PROBLEM_CONTENT} for s in statuses}
