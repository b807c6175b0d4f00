"""The OpenAPI 3.1 document of the JSON API, served at ``/api/v1/openapi.json``.

Written by hand, next to nothing else, so it reads as the API's reference; a test keeps
it honest both ways (every ``/api/v1`` route the server registers is described here and
every operation described here is routed), and schemathesis checks the running server
against it. Schemas say what a client may rely on; objects allow further properties,
so adding a field is not a breaking change.
"""

from __future__ import annotations

from typing import Any

from web.permissions import DEFAULT_ROLES, rule_for

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


def _op(
    summary: str,
    *,
    tag: str,
    responses: dict[str, Any],
    params: list[dict[str, Any]] | None = None,
    body: Schema | None = None,
    body_required: bool = True,
    description: str | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "tags": [tag]}
    if description:
        op["description"] = description
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = {"required": body_required, "content": {JSON: {"schema": body}}}
    resp = dict(responses)
    if body is not None:
        resp.setdefault("400", _error("the body is not valid JSON, or a field is wrong"))
        resp.setdefault("415", _error("the body is not application/json"))
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

SCHEMAS.update(
    {
        "User": _obj(
            {"name": STR, "role": {"type": "string", "enum": ["admin", "logistics", "producer"]}},
            {"display_name": _nullable(STR), "created_at": TIME, "disabled": BOOL},
        ),
        "Session": _obj(
            {"user": STR, "role": STR, "via": STR},
            {"display_name": _nullable(STR), "csrf_token": _nullable(STR), "expires_at": _nullable(TIME)},
        ),
        "Token": _obj(
            {"id": {"anyOf": [INT, STR]}, "created_at": TIME},
            {"name": _nullable(STR), "owner": _nullable(STR), "last_used_at": _nullable(TIME)},
        ),
        "Links": _obj({"sites": {"type": "array", "items": STR}, "devices": {"type": "array", "items": STR}}),
    }
)

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
                responses=_ok("the streams", _list_of("streams", _ref("Stream"))),
            ),
            "post": _op(
                "Create a stream; the answer carries its publish key, once",
                tag="streams",
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
                responses={**_ok("the stream", _ref("Stream")), "404": not_found},
            ),
            "patch": _op(
                "Change a stream's title, site, kind, camera URL or visibility",
                tag="streams",
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
                responses={"204": {"description": "removed"}, "404": not_found},
            ),
        },
        "/api/v1/streams/{slug}/rotate-key": {
            "parameters": [_slug],
            "post": _op(
                "A new publish key; a publisher using the old one is cut off",
                tag="streams",
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
                responses={**_ok("the alert", _ref("Alert")), "404": _error("no such alert")},
            ),
        },
        "/api/v1/alerts/{id}/acknowledge": {
            "parameters": [_alert_id],
            "post": _op(
                "Acknowledge an alert, with an optional comment",
                tag="alerts",
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
                responses=_ok("the profiles", _list_of("profiles", _ref("Profile"))),
            ),
        },
        "/api/v1/alert-profiles/{id}": {
            "parameters": [_path_param("id", ID, "the profile's id")],
            "put": _op(
                "Create or replace a custom profile",
                tag="alerts",
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
                responses=_ok("the devices", _list_of("devices", _ref("Device"))),
            ),
        },
        "/api/v1/devices/{id}": {
            "parameters": [_path_param("id", ID, "the device's id (its MQTT user name)")],
            "put": _op(
                "Assign a device's site, profile and name",
                tag="devices",
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


def _account_paths() -> dict[str, Any]:
    name = _path_param("name", STR, "the user's name")
    role = {"type": "string", "enum": ["admin", "logistics", "producer"]}
    password = {"type": "string", "minLength": 12, "maxLength": 1024}
    return {
        "/api/v1/session": {
            "post": _op(
                "Log in: sets the session cookie; the answer carries the CSRF token",
                tag="accounts",
                body=_strict(
                    {
                        "name": {"type": "string", "minLength": 1, "maxLength": 200},
                        "password": {"type": "string", "minLength": 1, "maxLength": 1024},
                    }
                ),
                responses={
                    **_ok("logged in", _ref("Session")),
                    "401": _error("wrong name or password"),
                    "403": _error("not sent from this site's own page"),
                    "429": _error("too many failed logins; wait"),
                },
            ),
            "get": _op(
                "Who is logged in, and the session's CSRF token",
                tag="accounts",
                responses=_ok("the caller", _ref("Session")),
            ),
            "delete": _op(
                "Log out",
                tag="accounts",
                responses={
                    "204": {"description": "logged out"},
                    "200": {"description": "logged out"},
                    "403": _error("a CSRF token is missing"),
                },
            ),
        },
        "/api/v1/users": {
            "get": _op(
                "Every user", tag="accounts", responses=_ok("the users", _list_of("users", _ref("User")))
            ),
            "post": _op(
                "Add a user",
                tag="accounts",
                body=_strict(
                    {
                        "name": {"type": "string", "minLength": 1, "maxLength": 64},
                        "role": role,
                        "password": password,
                    },
                    {"display_name": _nullable({"type": "string", "maxLength": 200})},
                ),
                responses={
                    **_ok("created", _ref("User"), "201"),
                    "409": _error("the name is taken"),
                    "422": _error("a field's value is not allowed"),
                },
            ),
        },
        "/api/v1/users/{name}": {
            "parameters": [name],
            "patch": _op(
                "Change a user (an admin: anyone; others: their own display name and password)",
                tag="accounts",
                body=_strict(
                    {},
                    {
                        "display_name": _nullable({"type": "string", "maxLength": 200}),
                        "role": role,
                        "disabled": BOOL,
                        "password": password,
                        "old_password": STR,
                    },
                ),
                responses={
                    **_ok("the user", _ref("User")),
                    "404": _error("no such user"),
                    "409": _error("it would leave no enabled admin"),
                    "422": _error("a field's value is not allowed"),
                },
            ),
            "delete": _op(
                "Remove a user; their sessions and tokens end",
                tag="accounts",
                responses={
                    "204": {"description": "removed"},
                    "404": _error("no such user"),
                    "409": _error("the last enabled admin"),
                },
            ),
        },
        "/api/v1/tokens": {
            "get": _op(
                "API tokens (never their secrets)",
                tag="accounts",
                responses=_ok("the tokens", _list_of("tokens", _ref("Token"))),
            ),
            "post": _op(
                "Make an API token; the answer carries it, once",
                tag="accounts",
                body=_strict({}, {"name": _nullable({"type": "string", "maxLength": 200}), "owner": STR}),
                body_required=False,
                responses={
                    **_ok("created", {"allOf": [_ref("Token"), _obj({"token": STR})]}, "201"),
                    "404": _error("no such user"),
                    "422": _error("the admin token is no user: name the token's owner"),
                },
            ),
        },
        "/api/v1/tokens/{id}": {
            "parameters": [_path_param("id", STR, "the token's id")],
            "delete": _op(
                "Revoke a token",
                tag="accounts",
                responses={"204": {"description": "revoked"}, "404": _error("no such token")},
            ),
        },
    }


def _console_paths() -> dict[str, Any]:
    return {
        "/api/v1/fleet": {
            "get": _op(
                "Every known device: site, profile, limits, latest reading and its age, alerts, state",
                tag="devices",
                params=[_query("site", STR, "only these sites (repeatable)")],
                responses={
                    **_ok("the fleet", {"type": "object"}),
                    "400": _error("a filter's value is wrong"),
                },
            ),
        },
        "/api/v1/devices/{id}/history": {
            "parameters": [_path_param("id", ID, "the device's id")],
            "get": _op(
                "A device's readings in buckets (min, mean, max, count) and its profile's limits",
                tag="devices",
                params=[
                    _query("from", TIME, "start (default: 24 h ago)"),
                    _query("to", TIME, "end (default: now)"),
                    _query("bucket", STR, "seconds, or 30s / 5m / 1h / 1d (default: ≤ 1,000 points)"),
                ],
                responses={
                    **_ok("the buckets", {"type": "object"}),
                    "400": _error("a bad range or bucket"),
                    "404": _error("no such device"),
                },
            ),
        },
        "/api/v1/streams/{slug}/links": {
            "parameters": [_slug],
            "get": _op(
                "The sites and devices whose readings show over the stream",
                tag="streams",
                params=[_query("share", STR, "an unlisted stream's share token")],
                responses={**_ok("the links", _ref("Links")), "404": _error("no such stream")},
            ),
            "put": _op(
                "Link the stream to sites and devices",
                tag="streams",
                body=_strict(
                    {},
                    {
                        "sites": {"type": "array", "items": STR, "maxItems": 100},
                        "devices": {"type": "array", "items": STR, "maxItems": 100},
                    },
                ),
                responses={
                    **_ok("the links", _ref("Links")),
                    "404": _error("no such stream"),
                    "415": _error("the body is not application/json"),
                    "422": _error("a site or device id is not allowed"),
                },
            ),
        },
        "/api/v1/streams/{slug}/share": {
            "parameters": [_slug],
            "post": _op(
                "A signed, expiring link to an unlisted stream's watch page",
                tag="streams",
                body=_strict({}, {"ttl_s": {"type": "integer", "minimum": 60, "maximum": 31_536_000}}),
                body_required=False,
                responses={
                    **_ok("the link", _obj({"url": STR, "expires_at": TIME}), "201"),
                    "404": _error("no such stream"),
                    "415": _error("the body is not application/json"),
                    "422": _error("a field's value is not allowed"),
                },
            ),
        },
    }


def _evidence_paths() -> dict[str, Any]:
    b64 = {"type": "string", "contentEncoding": "base64"}
    index_list = _query(
        "index",
        {"type": "array", "items": {"type": "integer", "minimum": 0}, "maxItems": 1000},
        "leaf indices (repeat index=…)",
    )
    index_list["required"] = True
    index_list["style"] = "form"
    index_list["explode"] = True
    return {
        "/api/v1/evidence/key": {
            "get": _op(
                "The log's public key (a C2SP note verifier key) and origin",
                tag="evidence",
                responses={
                    **_ok("the key", _obj({"origin": STR, "vkey": STR})),
                    "503": _error("the server has no signing key"),
                },
            ),
        },
        "/api/v1/evidence/proofs": {
            "get": _op(
                "RFC 6962 inclusion proofs of leaves in the tree of a size",
                tag="evidence",
                params=[
                    index_list,
                    _query("size", {"type": "integer", "minimum": 1}, "tree size (default: now)"),
                ],
                responses=_ok(
                    "the proofs",
                    _obj(
                        {
                            "size": INT,
                            "root": b64,
                            "proofs": {
                                "type": "object",
                                "additionalProperties": {"type": "array", "items": b64},
                            },
                        }
                    ),
                ),
            ),
        },
        "/api/v1/evidence/leaves": {
            "get": _op(
                "Leaves' canonical records (RFC 8785 JSON, base64)",
                tag="evidence",
                params=[index_list],
                responses={
                    **_ok("the leaves", _obj({"leaves": {"type": "object", "additionalProperties": b64}})),
                    "404": _error("an index is beyond the log"),
                },
            ),
        },
        "/api/v1/evidence/devices/{id}/batches": {
            "parameters": [_path_param("id", STR, "the device's id")],
            "get": _op(
                "A device's chain of readings-batch leaves over a window, and the one after it",
                tag="evidence",
                params=[
                    {**_query("from", TIME, "window start"), "required": True},
                    {**_query("to", TIME, "window end"), "required": True},
                ],
                responses=_ok(
                    "the batches",
                    _obj(
                        {
                            "device_id": STR,
                            "batches": {
                                "type": "array",
                                "items": _obj(
                                    {"index": INT, "ts_first_us": INT, "ts_last_us": INT, "count": INT}
                                ),
                            },
                        }
                    ),
                ),
            ),
        },
        "/api/v1/evidence/batches/{index}/readings": {
            "parameters": [_path_param("index", {"type": "integer", "minimum": 0}, "the leaf's index")],
            "get": _op(
                "The readings a readings-batch leaf hashed, in time order",
                tag="evidence",
                responses={
                    **_ok(
                        "the readings",
                        _obj(
                            {
                                "index": INT,
                                "device_id": STR,
                                "readings": {"type": "array", "items": {"type": "object"}},
                            }
                        ),
                    ),
                    "404": _error("no such leaf, or not a readings batch"),
                },
            ),
        },
    }


def _trust_paths() -> dict[str, Any]:
    """The public trust page's endpoint, QR codes, test reports and photos (web.trust,
    web.qr, web.api_files)."""
    sid = _path_param("id", {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{2,39}$"}, "the shipment")
    batch = _path_param("batch", ID, "the product batch")
    file_schema = _obj(
        {"sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"}, "size": INT, "content_type": STR,
         "kind": {"type": "string", "enum": ["test_report", "photo"]}, "name": STR, "url": STR,
         "evidence_leaf": INT},
        {"product_batch": STR, "shipment_id": _nullable(STR), "uploaded_at": TIME},
    )
    image = {"description": "the QR code of /v/<id>#k=<vkey>"}
    return {
        "/api/v1/public/shipments/{id}": {
            "get": _op(
                "A shipment as its trust page shows it, with the evidence the page verifies",
                tag="trust",
                description="No login. `evidence` (null without a signing key) holds a signed"
                " checkpoint, leaves (base64), one multi-leaf inclusion proof for them all (`multiproof`:"
                " base64 of 32-byte hashes) and each batch's raw readings (`records`: base64 of the"
                " 29-byte records its digest is over). Rate-limited per client address.",
                params=[sid],
                responses={
                    **_ok("the shipment", _obj({"shipment": {"type": "object"}, "report": {"type": "object"},
                                                "profile": {"type": "object"}, "files": {"type": "array"},
                                                "streams": {"type": "array"},
                                                "evidence": _nullable({"type": "object"})})),
                    "404": _error("no such shipment"),
                    "429": _error("too many requests from this address; Retry-After says when to retry"),
                },
            )
        },
        "/api/v1/public/shipments/{id}/bundle": {
            "get": _op(
                "The shipment's offline evidence bundle, for `origincast verify`",
                tag="trust",
                description="No login. One JSON file (Content-Disposition: attachment): the public"
                " shipment with its evidence, each file's bytes (base64; files over the bundle's"
                " `file_limits` are named by SHA-256 only), the log's key as served (verify with a"
                " key obtained separately) and the RFC 3161 timestamp of the closing checkpoint.",
                params=[sid],
                responses={
                    **_ok("the bundle", _obj({"format": STR, "version": INT, "vkey": STR,
                                              "shipment": {"type": "object"}, "report": {"type": "object"},
                                              "profile": {"type": "object"}, "files": {"type": "array"},
                                              "evidence": {"type": "object"},
                                              "timestamp": {"type": "object"}})),
                    "404": _error("no such shipment"),
                    "429": _error("too many requests from this address; Retry-After says when to retry"),
                    "503": _error("the evidence log has no signing key"),
                },
            )
        },
        "/api/v1/shipments/{id}/qr.svg": {
            "get": _op(
                "The package's QR code (SVG)",
                tag="trust",
                params=[sid],
                responses={
                    "200": {**image, "content": {"image/svg+xml": {}}},
                    "404": _error("no such shipment"),
                    "503": _error("the evidence log has no signing key"),
                },
            )
        },
        "/api/v1/shipments/{id}/qr.png": {
            "get": _op(
                "The package's QR code (PNG)",
                tag="trust",
                params=[sid],
                responses={
                    "200": {**image, "content": {"image/png": {}}},
                    "404": _error("no such shipment"),
                    "503": _error("the evidence log has no signing key"),
                },
            )
        },
        "/api/v1/batches/{batch}/files": {
            "get": _op(
                "A product batch's test reports and origin photos",
                tag="trust",
                params=[batch, _query("shipment_id", STR, "only those of no shipment or of this one")],
                responses={
                    **_ok("the files", _list_of("files", file_schema)),
                    "400": _error("bad shipment_id"),
                },
            ),
            "post": {
                **_op(
                    "Upload a test report (PDF, JPEG, PNG) or an origin photo (JPEG, PNG)",
                    tag="trust",
                    description="multipart/form-data: `kind` (test_report or photo), optional"
                    " `shipment_id`, `file`. The type is checked by the file's first bytes; the size"
                    " by `files.max_bytes`. Stored under its SHA-256 with an evidence leaf.",
                    params=[batch],
                    responses={
                        **_ok("the stored file", file_schema, "201"),
                        "400": _error("a field is missing or wrong"),
                        "413": _error("the file is too large"),
                        "415": _error("not multipart, or the file is not an accepted type"),
                    },
                ),
                "requestBody": {
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": _obj(
                                {"kind": {"type": "string", "enum": ["test_report", "photo"]},
                                 "file": {"type": "string", "format": "binary"}},
                                {"shipment_id": STR},
                            )
                        }
                    },
                },
            },
        },
    }


def _misc_paths() -> dict[str, Any]:
    return {
        "/api/v1/live": {
            "get": _op(
                "WebSocket live feed: readings and alert events, the current state first",
                tag="live",
                description="Upgrade to a WebSocket. Select with `stream` (a public stream, or an"
                " unlisted one with its `share` token), or, for staff, `site` / `device`."
                " Messages are JSON objects with a `type` of snapshot, reading or alert.",
                params=[
                    _query("stream", SLUG, "the stream whose linked sensors to follow"),
                    _query("share", STR, "an unlisted stream's share token"),
                    _query("site", STR, "staff: every device of these sites (comma-separated)"),
                    _query("device", STR, "staff: these devices (comma-separated)"),
                    _query("all", {"type": "string", "enum": ["1"]}, "staff: every device (the console)"),
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
                responses=_ok("the OpenAPI document", {"type": "object"}),
            ),
        },
    }


# -- shipments (web.api_shipments) -------------------------------------------------------

SHIPMENT_ID: Schema = {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]{2,39}$"}
_shipment_id = _path_param("id", STR, "the shipment's id (3-40 of a-z 0-9 -)")
_SEGMENT_IN = _strict(
    {"device_id": ID},
    {"start": TIME, "end": _nullable(TIME), "label": _nullable(_text(200))},
)
_SHIPMENT_FIELDS: dict[str, Schema] = {
    "product": _text(200),
    "batch": _text(200),
    "origin_site": ID,
    "profile_id": ID,
}
_SHIPMENT_OPTIONAL: dict[str, Schema] = {
    "opened_at": TIME,
    "streams": {"type": "array", "items": SLUG, "maxItems": 20},
    "segments": {"type": "array", "items": _SEGMENT_IN, "maxItems": 100},
}
SCHEMAS["Segment"] = _obj(
    {"device_id": STR, "start": TIME, "end": _nullable(TIME)}, {"label": _nullable(STR)}
)
SCHEMAS["Shipment"] = _obj(
    {
        "id": STR,
        "product": STR,
        "batch": STR,
        "origin_site": STR,
        "profile_id": STR,
        "state": {"type": "string", "enum": ["open", "closed"]},
        "opened_at": TIME,
        "closed_at": _nullable(TIME),
        "segments": {"type": "array", "items": _ref("Segment")},
        "streams": {"type": "array", "items": STR},
        "version": INT,
    }
)
SCHEMAS["ShipmentReport"] = _obj(
    {
        "shipment": _ref("Shipment"),
        "as_of": TIME,
        "profile": {"type": "object"},
        "limits": {"type": "array", "items": {"type": "object"}},
        "method": {"type": "object"},
        "segments": {"type": "array", "items": {"type": "object"}},
        "total": {"type": "object"},
        "gaps": {"type": "array", "items": {"type": "object"}},
        "excursions": {"type": "array", "items": {"type": "object"}},
        "device_alerts": {"type": "array", "items": {"type": "object"}},
    },
    description="Figures at full precision; the method block defines every figure (telemetry.reports).",
)
_GAP_PARAMS = [
    _query("gap_threshold_s", {"type": "number", "minimum": 1, "maximum": 864000}, "a fixed gap threshold G"),
    _query("gap_factor", {"type": "number", "exclusiveMinimum": 0, "maximum": 864000}, "G = factor × median"),
    _query("min_gap_s", {"type": "number", "exclusiveMinimum": 0, "maximum": 864000}, "G is at least this"),
]


def _shipment_paths() -> dict[str, Any]:
    not_found = {"404": _error("no such shipment")}
    conflict = {"409": _error("the shipment is closed, or changed meanwhile, or the id is taken")}
    report_errors = {"400": _error("a gap parameter or the language is wrong"), **not_found}
    return {
        "/api/v1/shipments": {
            "get": _op(
                "List shipments, newest opened first",
                tag="shipments",
                params=[
                    _query("state", {"type": "string", "enum": ["open", "closed"]}, ""),
                    _query("origin_site", STR, "only this origin site's"),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "at most this many"),
                ],
                responses={
                    **_ok("the shipments", _list_of("shipments", _ref("Shipment"))),
                    "400": _error("a filter's value is wrong"),
                },
            ),
            "post": _op(
                "Open a shipment (id: a chosen slug, or 10 random base32 characters)",
                tag="shipments",
                body=_strict(_SHIPMENT_FIELDS, {"id": SHIPMENT_ID, **_SHIPMENT_OPTIONAL}),
                responses={**_ok("the new shipment", _ref("Shipment"), "201"), **conflict},
            ),
        },
        "/api/v1/shipments/{id}": {
            "parameters": [_shipment_id],
            "get": _op(
                "One shipment with its route",
                tag="shipments",
                responses={**_ok("the shipment", _ref("Shipment")), **not_found},
            ),
            "patch": _op(
                "Change an open shipment's fields (segments: the whole route)",
                tag="shipments",
                body=_strict({}, {**_SHIPMENT_FIELDS, **_SHIPMENT_OPTIONAL, "version": INT}),
                responses={**_ok("the shipment", _ref("Shipment")), **not_found, **conflict},
            ),
        },
        "/api/v1/shipments/{id}/segments": {
            "parameters": [_shipment_id],
            "post": _op(
                "Add a segment to the route; the open one ends where it starts",
                tag="shipments",
                body=_SEGMENT_IN,
                responses={**_ok("the shipment", _ref("Shipment"), "201"), **not_found, **conflict},
            ),
        },
        "/api/v1/shipments/{id}/close": {
            "parameters": [_shipment_id],
            "post": _op(
                "Close the shipment (and its open segment) at a time, default now",
                tag="shipments",
                body=_strict({}, {"at": TIME}),
                body_required=False,
                responses={
                    **_ok("the shipment", _ref("Shipment")),
                    **not_found,
                    **conflict,
                    "503": _error("an ingester holding readings of the route did not seal them in time"),
                },
            ),
        },
        "/api/v1/shipments/{id}/report": {
            "parameters": [_shipment_id],
            "get": _op(
                "The shipment's report: figures per segment and in total, gaps, excursions",
                tag="shipments",
                params=_GAP_PARAMS,
                responses={**_ok("the report", _ref("ShipmentReport")), **report_errors},
            ),
        },
        "/api/v1/shipments/{id}/report.csv": {
            "parameters": [_shipment_id],
            "get": _op(
                "The report as CSV (summary, limits, gaps, excursions, readings)",
                tag="shipments",
                params=_GAP_PARAMS,
                responses={
                    "200": {"description": "UTF-8 CSV", "content": {"text/csv": {"schema": STR}}},
                    **report_errors,
                },
            ),
        },
        "/api/v1/shipments/{id}/report.pdf": {
            "parameters": [_shipment_id],
            "get": _op(
                "The report as PDF, in Simplified Chinese or English",
                tag="shipments",
                params=[
                    _query("lang", {"type": "string", "enum": ["zh-CN", "en"]}, "default en"),
                    *_GAP_PARAMS,
                ],
                responses={
                    "200": {
                        "description": "the PDF",
                        "content": {"application/pdf": {"schema": {"type": "string", "format": "binary"}}},
                    },
                    **report_errors,
                    "503": _error("the PDF font (Debian package fonts-wqy-microhei) is not installed"),
                },
            ),
        },
    }


def _add_roles(paths: dict[str, Any]) -> None:
    """Who may call each operation comes from web.permissions, the table the server
    enforces: written as ``x-roles`` and as the security requirement, with the 401/403
    answers a protected operation can give."""
    for path, item in paths.items():
        for method, op in item.items():
            if method == "parameters":
                continue
            rule = rule_for(method.upper(), path)
            roles = rule.roles if rule is not None else DEFAULT_ROLES
            op["x-roles"] = [*roles] if roles else ["public"]
            if rule is not None and rule.note:
                op.setdefault("description", f"Who: {rule.note}.")
            resp = op["responses"]
            resp.setdefault("400", _error("a control character in the URL, or a bad parameter"))
            if roles:
                op["security"] = [{"bearer": []}, {"session": []}]
                resp.setdefault("401", _error("no valid credentials"))
                resp.setdefault("403", _error("this role may not do this, or the CSRF token is missing"))
                resp.setdefault("429", _error("too many failed authentication attempts from this address"))
            else:
                op["security"] = [{}]


def build_document(version: str) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for part in (
        _stream_paths(),
        _alert_paths(),
        _account_paths(),
        _console_paths(),
        _shipment_paths(),
        _trust_paths(),
        _evidence_paths(),
        _misc_paths(),
    ):
        paths.update(part)
    _add_roles(paths)
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
