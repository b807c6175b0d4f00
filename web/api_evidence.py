"""The evidence log over HTTP, for anyone: nothing here needs trust, everything is checked.

    GET /log/checkpoint                          the latest signed checkpoint (C2SP signed note)
    GET /log/tile/<L>/<N>[.p/<W>]                C2SP tlog-tiles: hash tiles
    GET /log/tile/entries/<N>[.p/<W>]            … and entry bundles
    GET /api/v1/evidence/key                     {"origin", "vkey"}: the log's public key
    GET /api/v1/evidence/proofs?size=&index=…    inclusion proofs against a tree size
    GET /api/v1/evidence/leaves?index=…          leaves' canonical records (base64)
    GET /api/v1/evidence/devices/{id}/batches?from=&to=
                                                 the device's readings-batch leaves over a window:
                                                 from the first covering it to the last, and the
                                                 one after (the chain a verifier walks)
    GET /api/v1/evidence/batches/{index}/readings
                                                 the readings a batch leaf hashed

A browser verifies the checkpoint against the key it brought (the QR code's), then
every proof against the checkpoint's root; so the server is believed in nothing.
Full tiles never change and are cached for a year; partial ones and the checkpoint are
not cached.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from telemetry.evidence.canonical import ReadingsBatch, RecordError, parse_record
from telemetry.evidence.tiles import TILE_WIDTH, TilePathError, parse_tile_path
from telemetry.storage import Store
from telemetry.storage.evidence_batches import ts_us
from web.errors import json_error, json_response
from web.evidence import EvidenceService, NoSigningKey

MAX_INDICES = 1000
_IMMUTABLE = "public, max-age=31536000, immutable"




def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


class EvidenceApi:
    def __init__(self, service: Callable[[], EvidenceService], store: Callable[[], Store]) -> None:
        self._service = service  # late-bound: opened in cleanup_ctx
        self._store = store

    def register(self, router: web.UrlDispatcher) -> None:
        router.add_get("/log/checkpoint", self.checkpoint)
        router.add_get("/log/{tile:tile/.+}", self.tile)
        router.add_get("/api/v1/evidence/key", self.key)
        router.add_get("/api/v1/evidence/proofs", self.proofs)
        router.add_get("/api/v1/evidence/leaves", self.leaves)
        router.add_get("/api/v1/evidence/devices/{id}/batches", self.device_batches)
        router.add_get("/api/v1/evidence/batches/{index}/readings", self.batch_readings)

    def _run(self, fn: Callable[[Any], Any]) -> Any:
        """Call fn(conn) on a connection of the store (in a worker thread)."""

        def run() -> Any:
            with self._store().evidence_connection() as conn:
                return fn(conn)

        return asyncio.to_thread(run)

    # -- the C2SP endpoints -------------------------------------------------------------

    async def checkpoint(self, request: web.Request) -> web.Response:
        try:
            cp = await self._service().current_checkpoint()
        except NoSigningKey as exc:
            raise json_error(web.HTTPServiceUnavailable, str(exc)) from None
        return web.Response(
            text=cp.note, content_type="text/plain", charset="utf-8", headers={"Cache-Control": "no-cache"}
        )

    async def tile(self, request: web.Request) -> web.Response:
        try:
            ref = parse_tile_path(request.match_info["tile"])
        except TilePathError as exc:
            raise json_error(web.HTTPNotFound, str(exc)) from None
        log = self._service().log
        level = ref.level
        if level is None:
            data = await self._run(lambda conn: log.entry_bundle(conn, ref.index, ref.width))
        else:
            data = await self._run(lambda conn: log.tile(conn, level, ref.index, ref.width))
        if data is None:
            raise json_error(web.HTTPNotFound, f"{ref.path} is not in the log (yet)")
        cache = _IMMUTABLE if ref.width == TILE_WIDTH else "no-cache"
        return web.Response(
            body=data, content_type="application/octet-stream", headers={"Cache-Control": cache}
        )

    # -- JSON for the trust page --------------------------------------------------------

    async def key(self, request: web.Request) -> web.Response:
        service = self._service()
        if service.signer is None:
            raise json_error(web.HTTPServiceUnavailable, "this server has no signing key")
        return json_response({"origin": service.signer.name, "vkey": service.vkey})

    async def proofs(self, request: web.Request) -> web.Response:
        indices = _indices(request)
        log = self._service().log
        size_text = request.query.get("size")

        def run(conn: Any) -> dict[str, Any]:
            tree = log.size(conn)
            size = _int_param("size", size_text) if size_text else tree
            if not 0 < size <= tree:
                raise json_error(web.HTTPBadRequest, f"size must be 1..{tree} (the log's size)")
            outside = [i for i in indices if i >= size]
            if outside:
                raise json_error(web.HTTPBadRequest, f"index {outside[0]} is not in a tree of {size}")
            proofs = log.inclusion_proofs(conn, indices, size)
            return {
                "size": size,
                "root": _b64(log.root(conn, size)),
                "proofs": {str(i): [_b64(h) for h in proofs[i]] for i in indices},
            }

        return json_response(await self._run(run))

    async def leaves(self, request: web.Request) -> web.Response:
        indices = _indices(request)
        log = self._service().log

        def run(conn: Any) -> dict[str, Any]:
            size = log.size(conn)
            missing = [i for i in indices if i >= size]
            if missing:
                raise json_error(web.HTTPNotFound, f"no leaf {missing[0]}: the log has {size}")
            out = {}
            for i in indices:
                out[str(i)] = _b64(log.leaves(conn, i, i + 1)[0].entry)
            return {"leaves": out}

        return json_response(await self._run(run))

    async def device_batches(self, request: web.Request) -> web.Response:
        device = request.match_info["id"]
        start, end = _time_param(request, "from"), _time_param(request, "to")
        if end <= start:
            raise json_error(web.HTTPBadRequest, "to must be after from")
        store, log = self._store(), self._service().log
        covering = await asyncio.to_thread(store.leaves_covering, device, start, end)

        def run(conn: Any) -> list[dict[str, Any]]:
            if not covering:
                return []
            chain = log.device_leaves(conn, device, covering[0], covering[-1] + 1)
            after = log.next_device_leaf(conn, device, covering[-1])
            out = []
            for leaf in [*chain, *([after] if after else [])]:
                record = parse_record(leaf.entry)
                assert isinstance(record, ReadingsBatch)
                out.append(
                    {
                        "index": leaf.index,
                        "ts_first_us": record.ts_first_us,
                        "ts_last_us": record.ts_last_us,
                        "count": record.count,
                    }
                )
            return out

        return json_response({"device_id": device, "batches": await self._run(run)})

    async def batch_readings(self, request: web.Request) -> web.Response:
        index = _int_param("index", request.match_info["index"])
        log = self._service().log

        def leaf(conn: Any) -> bytes | None:
            got = log.leaves(conn, index, index + 1)
            return got[0].entry if got else None

        entry = await self._run(leaf)
        if entry is None:
            raise json_error(web.HTTPNotFound, f"no leaf {index}")
        try:
            record = parse_record(entry)
        except RecordError:
            record = None
        if not isinstance(record, ReadingsBatch):
            raise json_error(web.HTTPNotFound, f"leaf {index} is not a readings batch")
        rows = await asyncio.to_thread(
            self._store().readings_of_leaf, record.device_id, index, record.ts_first_us, record.ts_last_us
        )
        return json_response(
            {
                "index": index,
                "device_id": record.device_id,
                "readings": [
                    {
                        "ts_us": ts_us(r.ts),
                        "temp_c": r.temp_c,
                        "rh": r.rh,
                        "battery_v": r.battery_v,
                        "door_open": r.door_open,
                        "seq": r.seq,
                    }
                    for r in rows
                ],
            }
        )


def _int_param(name: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise json_error(web.HTTPBadRequest, f"{name} must be a whole number, got {text[:40]!r}") from None
    if not 0 <= value < 2**53:
        raise json_error(web.HTTPBadRequest, f"{name} must be 0..2**53-1")
    return value


def _indices(request: web.Request) -> list[int]:
    raw = request.query.getall("index", [])
    if not raw:
        raise json_error(web.HTTPBadRequest, "give at least one index=…")
    if len(raw) > MAX_INDICES:
        raise json_error(web.HTTPBadRequest, f"at most {MAX_INDICES} indices at once")
    return list(dict.fromkeys(_int_param("index", t) for t in raw))


def _time_param(request: web.Request, name: str) -> int:
    text = request.query.get(name)
    if not text:
        raise json_error(web.HTTPBadRequest, f"{name} is required (ISO 8601)")
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        message = f"{name} must be an ISO 8601 time, e.g. 2026-11-24T08:00:00Z"
        raise json_error(web.HTTPBadRequest, message) from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    if not datetime(1970, 1, 1, tzinfo=UTC) <= t <= datetime(3000, 1, 1, tzinfo=UTC):
        raise json_error(web.HTTPBadRequest, f"{name} must be between 1970 and 3000")
    return ts_us(t)
