"""`POST /csv/{mapping-name}`: a CSV file as a multipart upload (part `file`), imported with
`mappings/csv/<mapping-name>.yaml` through the same core as `hub import-csv`.

200 with a JSON summary, the rejects and the warnings (line, column, reason — never a value) when
the file was processed, even with rejects; 404 for an unknown mapping; 415 when the body is not
`multipart/form-data`; 400 when the upload is unusable (no `file` part, no header, a mapped column
missing, a bad `encoding`/`delimiter`); 422 when the mapping file itself is invalid; 503 (with the
summary) when some chunks could not be stored — sending the file again is safe. Optional
`encoding` and `delimiter` come as query parameters or form fields.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile

from adapters.inbound.csv.mapping import MappingError, check_delimiter, check_encoding, find_by_name
from adapters.inbound.csv.reader import CsvFileError
from adapters.inbound.csv.service import ReportEntry, import_csv, issue_dict
from hub.access import Permission, requires

router = APIRouter()
log = logging.getLogger("hub.api.csv")

MAX_LISTED = 1000
"""Rejects and warnings listed in the response (the counts are always complete)."""


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status)


@router.post("/csv/{mapping_name}", dependencies=[Depends(requires(Permission.MESSAGE_SUBMIT))])
async def post_csv(mapping_name: str, request: Request) -> JSONResponse:
    try:
        mapping = find_by_name(mapping_name)
    except MappingError as exc:
        log.error("CSV mapping %s is invalid", mapping_name[:64])
        return _error(422, f"the mapping is invalid: {exc}")
    if mapping is None:
        return _error(404, "no such CSV mapping")
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "multipart/form-data":
        return _error(415, "send the CSV file as multipart/form-data, in a part named 'file'")
    try:
        form = await request.form(max_files=1, max_fields=10)
    except Exception as exc:  # noqa: BLE001 — a malformed multipart body is the client's
        log.info("unreadable multipart upload (%s)", type(exc).__name__)
        return _error(400, "the multipart body could not be read")
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            return _error(400, "no file part named 'file' in the upload")
        try:
            encoding = request.query_params.get("encoding") or form.get("encoding")
            delimiter = request.query_params.get("delimiter") or form.get("delimiter")
            encoding = check_encoding(encoding) if encoding else None
            delimiter = check_delimiter(delimiter) if delimiter else None
        except MappingError as exc:
            return _error(400, str(exc))
        rejects: list[dict[str, object]] = []
        warnings: list[dict[str, object]] = []

        def report(entry: ReportEntry) -> None:
            target = rejects if entry.kind == "rejected" else warnings
            if len(target) < MAX_LISTED:
                target.append(issue_dict(entry))

        hub = request.app.state.hub
        try:
            summary = await import_csv(
                upload.file, mapping, hub.intake.accept, encoding=encoding, delimiter=delimiter,
                report=report, wait_processed=hub.intake.wait_until_processed,
            )
        except CsvFileError as exc:
            return _error(400, f"the file cannot be processed: {exc}")
        body = {
            "mapping": mapping.name, "feed": mapping.feed, "summary": summary.as_dict(),
            "rejects": rejects, "warnings": warnings,
            "listed_up_to": MAX_LISTED,
        }
        # Rows the database could not take: the upload was not (fully) processed; it can be sent again.
        return JSONResponse(body, 503 if summary.not_stored else 200)
    finally:
        await form.close()
