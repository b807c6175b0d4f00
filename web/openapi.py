"""The OpenAPI 3.1 document of the JSON API, served at ``/api/v1/openapi.json``.

Written by hand, next to nothing else, so it reads as the API's reference; a test keeps
it honest both ways (every ``/api/v1`` route the server registers is described here and
every operation described here is routed), and schemathesis checks the running server
against it. Schemas say what a client may rely on; objects allow further properties,
so adding a field is not a breaking change.
"""

from __future__ import annotations

from typing import Any

JSON = "application/json"
Schema = dict[str, Any]


# -- small builders ----------------------------------------------------------------------


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def _obj(required: dict[str, Schema], optional: dict[str, Schema] | None = None, **extra: Any) -> Schema:
    props = {**required, **(optional or {})}
    out: Schema = {"type": "object", "properties": props, "required": sorted(required)}
    out.update(extra)
    return out


def _strict(required: dict[str, Schema], optional: dict[str, Schema] | None = None) -> Schema:
    """A request body: unknown fields are refused (the server answers 400)."""
    return _obj(required, optional, additionalProperties=False)


def _list_of(key: str, item: Schema) -> Schema:
    return _obj({key: {"type": "array", "items": item}})


STR: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
NUM: Schema = {"type": "number"}
BOOL: Schema = {"type": "boolean"}
TIME: Schema = {"type": "string", "format": "date-time"}
ID: Schema = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.\\-]{0,63}$"}
SLUG: Schema = {"type": "string", "pattern": "^[a-z0-9-]{1,64}$"}


# Free text a person types: no control characters, at least one visible character.
def _text(max_len: int) -> Schema:
    return {
        "type": "string",
        "maxLength": max_len,
        "pattern": "^[^\\u0000-\\u001f]*[^\\s\\u0000-\\u001f][^\\u0000-\\u001f]*$",
    }


RTSP_URL: Schema = {
    "type": "string",
    "maxLength": 2000,
    "pattern": "^rtsps?://[A-Za-z0-9._~%!$&'()*+,;=:@-]+(/[!-~]*)?$",
}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": _ref("Error")}}}


def _ok(description: str, schema: Schema | None = None, status: str = "200") -> dict[str, Any]:
    if schema is None:
        return {status: {"description": description}}
    return {status: {"description": description, "content": {JSON: {"schema": schema}}}}


def _path_param(name: str, schema: Schema, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema, "description": description}


def _query(name: str, schema: Schema, description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


# Who may call an operation: the roles, or "public". Written into each operation as
# ``x-roles`` (the authorization walk test reads it) and as its security requirement.
PUBLIC: tuple[str, ...] = ()
STAFF = ("admin", "logistics")
ANY_USER = ("admin", "logistics", "producer")
ADMIN = ("admin",)


def _op(
    summary: str,
    *,
    tag: str,
    roles: tuple[str, ...],
    responses: dict[str, Any],
    params: list[dict[str, Any]] | None = None,
    body: Schema | None = None,
    body_required: bool = True,
    description: str | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "tags": [tag], "x-roles": list(roles) or ["public"]}
    if description:
        op["description"] = description
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = {"required": body_required, "content": {JSON: {"schema": body}}}
    resp = dict(responses)
    if roles:
        op["security"] = [{"bearer": []}, {"session": []}]
        resp.setdefault("401", _error("no valid credentials"))
        resp.setdefault("403", _error("the credentials' role may not do this (or a CSRF token is missing)"))
    else:
        op["security"] = [{}]
    if body is not None:
        resp.setdefault("400", _error("the body is not valid JSON, or a field is wrong"))
    op["responses"] = resp
    return op


# -- schemas ---------------------------------------------------------------------------

STREAM_STATE = _obj(
    {
        "status": {"type": "string", "enum": ["offline", "live"]},
        "viewers": INT,
        "fps": NUM,
        "bitrate_bps": INT,
        "uptime_s": NUM,
    },
    {
        "video_codec": _nullable(STR),
        "audio_codec": _nullable(STR),
        "width": _nullable(INT),
        "height": _nullable(INT),
    },
)

SCHEMAS: dict[str, Schema] = {
    "Error": _obj({"error": {"type": "string", "description": "what is wrong, for a person to read"}}),
    "StreamState": STREAM_STATE,
    "Stream": _obj(
        {
            "slug": SLUG,
            "title": STR,
            "kind": {"type": "string", "enum": ["whip", "rtsp", "testpattern"]},
            "visibility": {"type": "string", "enum": ["public", "unlisted"]},
            "created_at": TIME,
            "urls": _obj({"watch": STR, "whep": STR}, {"whip": STR}),
            "state": _ref("StreamState"),
        },
        {
            "site": _nullable(STR),
            "owner": _nullable(STR),
            "rtsp_url": {"type": "string", "description": "credentials masked; only to who may edit"},
        },
    ),
    "StreamCreated": {
        "allOf": [_ref("Stream"), _obj({"publish_key": {"type": "string", "description": "shown once"}})]
    },
    "AuditEntry": _obj(
        {"seq": INT, "at": TIME, "actor": STR, "action": STR, "comment": STR},
        {"detail": _nullable({"type": "object"})},
    ),
    "Alert": _obj(
        {
            "id": INT,
            "device_id": STR,
            "profile_id": STR,
            "rule_id": STR,
            "rule_kind": STR,
            "severity": STR,
            "status": {"type": "string", "enum": ["open", "acknowledged", "resolved"]},
            "start": TIME,
            "raised_at": TIME,
            "found_late": BOOL,
        },
        {
            "site_id": _nullable(STR),
            "metric": _nullable(STR),
            "threshold": _nullable(NUM),
            "cleared_at": _nullable(TIME),
            "duration_s": _nullable(NUM),
            "peak": _nullable(NUM),
            "audit": {"type": "array", "items": _ref("AuditEntry")},
        },
    ),
    "Profile": _obj({"id": STR, "rules": {"type": "array", "items": {"type": "object"}}}, {"builtin": BOOL}),
    "Device": _obj(
        {"device_id": STR},
        {"site_id": _nullable(STR), "profile_id": _nullable(STR), "name": _nullable(STR)},
    ),
}

SECURITY_SCHEMES = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "an API token (`origincast users token`), or the operator's admin token",
    },
    "session": {
        "type": "apiKey",
        "in": "cookie",
        "name": "origincast_session",
        "description": "the console's login session; state-changing requests also need the"
        " `X-CSRF-Token` header from `GET /api/v1/session`",
    },
}


# -- paths -----------------------------------------------------------------------------

_slug = _path_param("slug", SLUG, "the stream's slug")
_alert_id = _path_param("id", INT, "the alert's id")
_comment = _strict({}, {"comment": {"type": "string", "maxLength": 4000}})


def _stream_paths() -> dict[str, Any]:
    stream_fields = {
        "title": _text(200),
        "site": _nullable(_text(100)),
        "kind": {"type": "string", "enum": ["whip", "rtsp", "testpattern"]},
        "visibility": {"type": "string", "enum": ["public", "unlisted"]},
        "rtsp_url": _nullable(RTSP_URL),
    }
    not_found = _error("no such stream")
    return {
        "/api/v1/streams": {
            "get": _op(
                "List streams: public ones, and those the caller may manage",
                tag="streams",
                roles=PUBLIC,
                responses=_ok("the streams", _list_of("streams", _ref("Stream"))),
            ),
            "post": _op(
                "Create a stream; the answer carries its publish key, once",
                tag="streams",
                roles=("admin", "producer"),
                body=_strict(
                    {"slug": SLUG, "title": stream_fields["title"]},
                    {k: v for k, v in stream_fields.items() if k != "title"},
                ),
                responses={
                    **_ok("created", _ref("StreamCreated"), "201"),
                    "409": _error("a stream with that slug exists"),
                    "415": _error("the body is not application/json"),
                    "422": _error("a field's value is not allowed"),
                },
            ),
        },
        "/api/v1/streams/{slug}": {
            "parameters": [_slug],
            "get": _op(
                "One stream with its live state",
                tag="streams",
                roles=PUBLIC,
                responses={**_ok("the stream", _ref("Stream")), "404": not_found},
            ),
            "patch": _op(
                "Change a stream's title, site, kind, camera URL or visibility",
                tag="streams",
                roles=("admin", "producer"),
                body=_strict({}, stream_fields),
                responses={
                    **_ok("the changed stream", _ref("Stream")),
                    "404": not_found,
                    "415": _error("the body is not application/json"),
                    "422": _error("a field's value is not allowed"),
                },
            ),
            "delete": _op(
                "Remove a stream; its publisher and viewers are cut off",
                tag="streams",
                roles=("admin", "producer"),
                responses={"204": {"description": "removed"}, "404": not_found},
            ),
        },
        "/api/v1/streams/{slug}/rotate-key": {
            "parameters": [_slug],
            "post": _op(
                "A new publish key; a publisher using the old one is cut off",
                tag="streams",
                roles=("admin", "producer"),
                responses={
                    **_ok("the new key, shown once", _obj({"slug": SLUG, "publish_key": STR})),
                    "404": not_found,
                },
            ),
        },
    }


def _alert_paths() -> dict[str, Any]:
    return {
        "/api/v1/alerts": {
            "get": _op(
                "List alerts, newest first",
                tag="alerts",
                roles=STAFF,
                params=[
                    _query(
                        "state",
                        {"type": "string", "enum": ["open", "acknowledged", "resolved", "active"]},
                        "active = open or acknowledged",
                    ),
                    _query("device", STR, "only this device's"),
                    _query("site", STR, "only this site's"),
                    _query("severity", {"type": "string", "enum": ["info", "warning", "critical"]}, ""),
                    _query("since", TIME, "raised at or after"),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "at most this many"),
                ],
                responses={
                    **_ok("the alerts", _list_of("alerts", _ref("Alert"))),
                    "400": _error("a filter's value is wrong"),
                },
            ),
        },
        "/api/v1/alerts/{id}": {
            "parameters": [_alert_id],
            "get": _op(
                "One alert with its audit trail",
                tag="alerts",
                roles=STAFF,
                responses={**_ok("the alert", _ref("Alert")), "404": _error("no such alert")},
            ),
        },
        "/api/v1/alerts/{id}/acknowledge": {
            "parameters": [_alert_id],
            "post": _op(
                "Acknowledge an alert, with an optional comment",
                tag="alerts",
                roles=STAFF,
                body=_comment,
                body_required=False,
                responses={
                    **_ok("the alert event", {"type": "object"}),
                    "404": _error("no such alert"),
                    "409": _error("the alert is already resolved"),
                    "503": _error("the alert engine does not run in this process"),
                },
            ),
        },
        "/api/v1/alerts/{id}/resolve": {
            "parameters": [_alert_id],
            "post": _op(
                "Resolve an alert by hand, saying what was done (the corrective action)",
                tag="alerts",
                roles=STAFF,
                body=_strict({"comment": {"type": "string", "minLength": 1, "maxLength": 4000}}),
                responses={
                    **_ok("the alert event", {"type": "object"}),
                    "404": _error("no such alert"),
                    "409": _error("the alert is already resolved"),
                    "503": _error("the alert engine does not run in this process"),
                },
            ),
        },
        "/api/v1/alert-profiles": {
            "get": _op(
                "Built-in and custom alert profiles with their rules",
                tag="alerts",
                roles=STAFF,
                responses=_ok("the profiles", _list_of("profiles", _ref("Profile"))),
            ),
        },
        "/api/v1/alert-profiles/{id}": {
            "parameters": [_path_param("id", ID, "the profile's id")],
            "put": _op(
                "Create or replace a custom profile",
                tag="alerts",
                roles=STAFF,
                body={"type": "object", "description": "a Profile: id, name, rules (see README)"},
                responses={
                    **_ok("the profile", _ref("Profile")),
                    "503": _error("the alert engine does not run in this process"),
                },
            ),
        },
        "/api/v1/devices": {
            "get": _op(
                "Devices with their site, profile and name",
                tag="devices",
                roles=STAFF,
                responses=_ok("the devices", _list_of("devices", _ref("Device"))),
            ),
        },
        "/api/v1/devices/{id}": {
            "parameters": [_path_param("id", ID, "the device's id (its MQTT user name)")],
            "put": _op(
                "Assign a device's site, profile and name",
                tag="devices",
                roles=STAFF,
                body=_strict(
                    {},
                    {
                        "site_id": _nullable(ID),
                        "profile_id": _nullable(ID),
                        "name": _nullable({"type": "string", "maxLength": 200}),
                    },
                ),
                responses={
                    **_ok("the device", _ref("Device")),
                    "503": _error("the alert engine does not run in this process"),
                },
            ),
        },
    }


def _misc_paths() -> dict[str, Any]:
    return {
        "/api/v1/live": {
            "get": _op(
                "WebSocket live feed: readings and alert events, the current state first",
                tag="live",
                roles=PUBLIC,
                description="Upgrade to a WebSocket. Select with `stream` (a public stream, or an"
                " unlisted one with its `share` token), or, for staff, `site` / `device`."
                " Messages are JSON objects with a `type` of snapshot, reading or alert.",
                params=[
                    _query("stream", SLUG, "the stream whose linked sensors to follow"),
                    _query("share", STR, "an unlisted stream's share token"),
                    _query("site", STR, "staff: every device of these sites (comma-separated)"),
                    _query("device", STR, "staff: these devices (comma-separated)"),
                ],
                responses={
                    "101": {"description": "switching to the WebSocket protocol"},
                    "400": _error("no selection, or not a WebSocket request"),
                    "404": _error("no such stream"),
                },
            ),
        },
        "/api/v1/openapi.json": {
            "get": _op(
                "This document",
                tag="meta",
                roles=PUBLIC,
                responses=_ok("the OpenAPI document", {"type": "object"}),
            ),
        },
    }


def build_document(version: str) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for part in (_stream_paths(), _alert_paths(), _misc_paths()):
        paths.update(part)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "origincast API",
            "version": version,
            "description": "Streams, cold-chain telemetry, alerts and shipments. Errors are JSON"
            " objects with an `error` message.",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {"schemas": SCHEMAS, "securitySchemes": SECURITY_SCHEMES},
    }
