"""Message templates of the caller's tenant: CRUD and a preview that renders without sending."""

from __future__ import annotations

from fastapi import APIRouter, Response

from mailgate.api.deps import Caller, RequestId, Templates
from mailgate.api.schemas.common import problems
from mailgate.api.schemas.outbound import PreviewIn, PreviewOut, TemplateIn, TemplateList, TemplateOut, TemplateUpdate

router = APIRouter(prefix="/v1/templates", tags=["templates"])


@router.post("", status_code=201, response_model=TemplateOut, responses=problems(401, 403, 409, 422, 503))
async def create_template(body: TemplateIn, templates: Templates, caller: Caller, rid: RequestId) -> TemplateOut:
    record = await templates.create(
        caller, name=body.name, subject=body.subject, text=body.text, html=body.html, request_id=rid
    )
    return TemplateOut.of(record)


@router.get("", response_model=TemplateList, responses=problems(401, 403, 422, 503))
async def list_templates(templates: Templates, caller: Caller) -> TemplateList:
    return TemplateList(items=[TemplateOut.of(t) for t in await templates.list(caller)])


@router.get("/{id}", response_model=TemplateOut, responses=problems(401, 403, 404, 503), summary="By id or name")
async def get_template(id: str, templates: Templates, caller: Caller) -> TemplateOut:
    return TemplateOut.of(await templates.get(caller, id))


@router.put("/{id}", response_model=TemplateOut, responses=problems(401, 403, 404, 422, 503))
async def update_template(
    id: str, body: TemplateUpdate, templates: Templates, caller: Caller, rid: RequestId
) -> TemplateOut:
    record = await templates.update(caller, id, subject=body.subject, text=body.text, html=body.html, request_id=rid)
    return TemplateOut.of(record)


@router.delete("/{id}", status_code=204, responses=problems(401, 403, 404, 503))
async def delete_template(id: str, templates: Templates, caller: Caller, rid: RequestId) -> Response:
    await templates.delete(caller, id, rid)
    return Response(status_code=204)


@router.post(
    "/{id}/preview",
    response_model=PreviewOut,
    responses=problems(401, 403, 404, 422, 503),
    summary="Render with the given variables; a missing variable is a 422 naming it",
)
async def preview_template(id: str, body: PreviewIn, templates: Templates, caller: Caller) -> PreviewOut:
    rendered = await templates.preview(caller, id, body.variables)
    return PreviewOut(subject=rendered.subject, text=rendered.text, html=rendered.html)
