"""The OpenAPI document is valid and describes exactly the routes the server has."""

from __future__ import annotations

import re

from openapi_spec_validator import validate

from web.app import build_app
from web.config import load_config
from web.openapi import build_document

_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE"}


def _routed(tmp_path) -> set[tuple[str, str]]:
    config = load_config(env={"ORIGINCAST_DATABASE_URL": f"sqlite:///{tmp_path}/o.db"})
    app = build_app(config, with_ingest=False)
    out = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        if path and path.startswith("/api/v1") and route.method in _METHODS:
            out.add((route.method, path))
    return out


def _documented() -> set[tuple[str, str]]:
    doc = build_document("test")
    return {
        (method.upper(), path)
        for path, item in doc["paths"].items()
        for method in item
        if method.upper() in _METHODS
    }


def test_document_is_valid_openapi() -> None:
    validate(build_document("test"))


def test_every_route_is_documented_and_every_documented_route_exists(tmp_path) -> None:
    routed, documented = _routed(tmp_path), _documented()
    assert routed, "no /api/v1 routes found: the test is not looking at the app"
    assert routed - documented == set(), "routes missing from web/openapi.py"
    assert documented - routed == set(), "documented operations the server does not route"


def test_every_operation_names_who_may_call_it_and_errors_are_described() -> None:
    doc = build_document("test")
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method == "parameters":
                continue
            assert op["x-roles"], (method, path)
            assert set(op["x-roles"]) <= {"public", "admin", "logistics", "producer"}, (method, path)
            if op["x-roles"] != ["public"]:
                assert {"401", "403"} <= set(op["responses"]), (method, path)
            for param in re.findall(r"{(\w+)}", path):
                names = [p["name"] for p in item.get("parameters", []) + op.get("parameters", [])]
                assert param in names, (method, path, param)
