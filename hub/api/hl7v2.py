"""`POST /hl7v2`: HL7 v2 over HTTP. The body is ER7 (one message or a batch); the response body is the ACK."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from adapters.inbound.hl7v2.service import batch_reply
from hub.access import Permission, requires

router = APIRouter()

ACCEPTED_TYPES = ("application/hl7-v2", "text/plain", "x-application/hl7-v2+er7", "application/edi-hl7")


@router.post("/hl7v2", dependencies=[Depends(requires(Permission.MESSAGE_SUBMIT))])
async def post_hl7v2(request: Request) -> Response:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in ACCEPTED_TYPES:
        return Response(
            "unsupported media type: send ER7 as application/hl7-v2 or text/plain\n", 415, media_type="text/plain"
        )
    body = await request.body()
    answers = await request.app.state.hub.http_door.answer_all(body)
    codes = {a.code for a in answers}
    status = 400 if "AR" in codes else 422 if "AE" in codes else 200
    charset = answers[0].charset if answers else "utf-8"
    return Response(
        batch_reply(answers).encode(charset, errors="replace"), status,
        media_type=f"application/hl7-v2; charset={charset}",
    )
