"""Test reports and origin photos of a product batch (telemetry.files).

    POST /api/v1/batches/{batch}/files   multipart/form-data: kind=test_report|photo,
                                         shipment_id? (a shipment of this batch), file
                                         → 201 the stored file (producer or staff)
    GET  /api/v1/batches/{batch}/files   ?shipment_id= → {"files": [...]} (public: what the
                                         trust page shows; nothing in it is secret)
    GET  /files/{sha256}                 the bytes (public, immutable)

The upload is streamed: multipart parts are read chunk by chunk into a temporary file
while being hashed and counted, so aiohttp's ``client_max_size`` (which guards only
bodies read whole) stays small for every other route, and this route's own limit
(``files.max_bytes``) answers 413 as soon as it is passed. The type comes from the
file's first bytes: a declared ``image/png`` that is really HTML is refused (415).
Nothing is kept from a refused upload: no file, no row, no leaf.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, unquote

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from telemetry.files import PDF, BlobStore, BlobWriter, FileKind, FileRejected, StoredFile, clean_name
from telemetry.shipments import ShipmentError, check_shipment_id
from telemetry.storage import Store
from telemetry.storage.files import FileCatalog
from web.accounts import Role
from web.auth import Authenticator
from web.errors import json_error, json_response

UPLOADERS: tuple[Role, ...] = ("admin", "logistics", "producer")
BATCH_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}"
CHUNK = 256 * 1024
# Multipart headers and small fields around the file: what a body may add to max_bytes.
MULTIPART_OVERHEAD = 64 * 1024


class _TooLarge(web.HTTPClientError):
    # aiohttp's HTTPRequestEntityTooLarge wants sizes we do not know yet mid-stream
    status_code = 413


_STATUS = {400: web.HTTPBadRequest, 413: _TooLarge, 415: web.HTTPUnsupportedMediaType}




class FilesApi:
    def __init__(self, auth: Authenticator, store: Callable[[], Store], blobs: BlobStore) -> None:
        self._auth = auth
        self._store = store
        self._blobs = blobs
        self._catalog = FileCatalog(store)

    @property
    def catalog(self) -> FileCatalog:
        return self._catalog

    @property
    def blobs(self) -> BlobStore:
        return self._blobs

    def register(self, router: web.UrlDispatcher) -> None:
        router.add_post(f"/api/v1/batches/{{batch:{BATCH_PATTERN}}}/files", self.upload)
        router.add_get(f"/api/v1/batches/{{batch:{BATCH_PATTERN}}}/files", self.list_files)
        router.add_get("/files/{sha256:[0-9a-f]{64}}", self.download)

    # -- upload --------------------------------------------------------------------------------

    async def upload(self, request: web.Request) -> web.Response:
        principal = await self._auth.require(request, *UPLOADERS)
        batch = request.match_info["batch"]
        if request.content_length is not None and request.content_length > (
            self._blobs.max_bytes + MULTIPART_OVERHEAD
        ):
            raise json_error(
                web.HTTPRequestEntityTooLarge, f"the file is larger than {self._blobs.max_bytes} bytes"
            )
        if not request.content_type.startswith("multipart/form-data"):
            raise json_error(
                web.HTTPUnsupportedMediaType, "send multipart/form-data with kind and file fields"
            )
        fields, writer, declared_name = await self._read_form(request)
        try:
            kind = self._kind(fields)
            shipment_id = await self._shipment(fields, batch)
            if writer is None:
                raise json_error(web.HTTPBadRequest, "file: missing (a multipart field named file)")
            try:
                blob = await asyncio.to_thread(writer.finish, kind.accepted)
            except FileRejected as exc:
                raise json_error(_STATUS[exc.status], str(exc)) from None
        finally:
            if writer is not None:
                writer.close()  # drops the temporary file unless finish() handed it on
        try:
            await asyncio.to_thread(self._blobs.keep, blob)
            stored = await asyncio.to_thread(
                lambda: self._catalog.add(
                    product_batch=batch,
                    shipment_id=shipment_id,
                    kind=kind,
                    sha256=blob.sha256,
                    size=blob.size,
                    content_type=blob.content_type,
                    name=clean_name(declared_name, blob.content_type),
                    uploaded_by=principal.name,
                    at=datetime.now(UTC),
                )
            )
        except BaseException:
            # The row and leaf did not commit; the bytes stay only if another row names them.
            await asyncio.to_thread(self._forget_unreferenced, blob.sha256)
            raise
        return json_response(stored.to_dict(), status=201)

    def _forget_unreferenced(self, sha256: str) -> None:
        if self._catalog.by_sha256(sha256) is None:
            self._blobs.path(sha256).unlink(missing_ok=True)

    async def _read_form(self, request: web.Request) -> tuple[dict[str, str], BlobWriter | None, str | None]:
        try:
            reader = await request.multipart()
        except (ValueError, AssertionError) as exc:
            raise json_error(web.HTTPBadRequest, f"not a multipart body: {exc}") from None
        fields: dict[str, str] = {}
        writer: BlobWriter | None = None
        name: str | None = None
        try:
            while True:
                part = await reader.next()
                if part is None:
                    break
                if not isinstance(part, BodyPartReader):
                    raise json_error(web.HTTPBadRequest, "nested multipart bodies are not accepted")
                if part.name == "file":
                    if writer is not None:
                        raise json_error(web.HTTPBadRequest, "file: send one file per upload")
                    writer = await asyncio.to_thread(self._blobs.receive)
                    # aiohttp's client percent-encodes non-ASCII names; browsers send UTF-8
                    name = unquote(part.filename) if part.filename else None
                    await self._stream(part, writer)
                elif part.name in ("kind", "shipment_id"):
                    raw = await part.read(decode=True)
                    if len(raw) > 256:
                        raise json_error(web.HTTPBadRequest, f"{part.name}: too long")
                    fields[part.name] = raw.decode("utf-8", "replace").strip()
                else:
                    raise json_error(
                        web.HTTPBadRequest, f"{part.name!r:.60}: unknown field (only kind, shipment_id, file)"
                    )
        except web.HTTPException:
            if writer is not None:
                writer.close()
            raise
        except (ValueError, LookupError, AssertionError, HttpProcessingError) as exc:
            # aiohttp's multipart parser raises these on malformed parts and headers
            if writer is not None:
                writer.close()
            raise json_error(web.HTTPBadRequest, f"malformed multipart body: {exc!s:.200}") from None
        except BaseException:
            if writer is not None:
                writer.close()
            raise
        return fields, writer, name

    @staticmethod
    async def _stream(part: BodyPartReader, writer: BlobWriter) -> None:
        while True:
            chunk = await part.read_chunk(CHUNK)
            if not chunk:
                return
            try:
                writer.write(chunk)
            except FileRejected as exc:
                raise json_error(_STATUS[exc.status], str(exc)) from None

    @staticmethod
    def _kind(fields: dict[str, str]) -> FileKind:
        raw = fields.get("kind")
        try:
            return FileKind(raw or "")
        except ValueError:
            raise json_error(web.HTTPBadRequest, f"kind: must be test_report or photo, got {raw!r}") from None

    async def _shipment(self, fields: dict[str, str], batch: str) -> str | None:
        raw = fields.get("shipment_id") or None
        if raw is None:
            return None
        try:
            sid = check_shipment_id(raw)
        except ShipmentError:
            raise json_error(web.HTTPBadRequest, f"shipment_id: no shipment {raw!r}") from None
        shipment = await asyncio.to_thread(self._store().get_shipment, sid)
        if shipment is None:
            raise json_error(web.HTTPBadRequest, f"shipment_id: no shipment {sid!r}")
        if shipment.batch != batch:
            raise json_error(
                web.HTTPBadRequest,
                f"shipment_id: shipment {sid} carries batch {shipment.batch!r}, not {batch!r}",
            )
        return sid

    # -- reads ---------------------------------------------------------------------------------

    async def list_files(self, request: web.Request) -> web.Response:
        batch = request.match_info["batch"]
        raw = request.query.get("shipment_id") or None
        if raw is not None:
            try:
                check_shipment_id(raw)
            except ShipmentError as exc:
                raise json_error(web.HTTPBadRequest, str(exc)) from None
        files = await asyncio.to_thread(self._catalog.for_batch, batch, raw)
        return json_response({"product_batch": batch, "files": [public_file(f) for f in files]})

    async def download(self, request: web.Request) -> web.FileResponse:
        sha = request.match_info["sha256"]
        found = await asyncio.to_thread(self._catalog.by_sha256, sha)
        path = self._blobs.path(sha)
        if found is None or not path.is_file():
            raise json_error(web.HTTPNotFound, f"no file {sha}")
        # A PDF is never shown inline from our origin: a crafted PDF's scripts would run in
        # a viewer with our origin's rights. Images are safe to show (their type is checked
        # by their bytes, and nosniff keeps the browser from guessing another).
        disposition = "attachment" if found.content_type == PDF else "inline"
        return web.FileResponse(
            path,
            headers={
                "Content-Type": found.content_type,
                "Content-Disposition": f"{disposition}; filename*=UTF-8''{_rfc5987(found.name)}",
                # The name is the content's hash: it never changes.
                "Cache-Control": "public, max-age=31536000, immutable",
                "X-Content-Type-Options": "nosniff",
                "Content-Security-Policy": "default-src 'none'; img-src 'self'; sandbox",
                "Cross-Origin-Resource-Policy": "same-origin",
                "ETag": f'"{sha}"',
            },
        )


def public_file(f: StoredFile) -> dict[str, Any]:
    """What anyone may see of an upload (StoredFile.to_dict leaves out the uploader's
    account name)."""
    return f.to_dict()


def _rfc5987(name: str) -> str:
    return quote(name, safe="")
