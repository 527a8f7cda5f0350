"""The OpenAPI description served at ``/openapi.json``."""

from __future__ import annotations

from typing import Any

import msgspec

from qgjob.api.validation import BulkIn, JobIn

_ERROR = {"$ref": "#/components/schemas/Error"}


def _op(
    summary: str, ok: int = 200, *, body: dict[str, Any] | None = None, errors: tuple[int, ...] = ()
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "security": [{"bearer": []}],
        "responses": {str(ok): {"description": "OK"}},
    }
    for code in (401, 403, *errors):
        op["responses"][str(code)] = {"description": "error", "content": {"application/json": {"schema": _ERROR}}}
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return op


def document() -> dict[str, Any]:
    (job_schema, bulk_schema), components = msgspec.json.schema_components(
        [JobIn, BulkIn], ref_template="#/components/schemas/{name}"
    )
    components["Error"] = {
        "type": "object",
        "properties": {"error": {"type": "string"}, "message": {"type": "string"}, "detail": {"type": "array"}},
        "required": ["error", "message", "detail"],
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "qgjob", "version": "1"},
        "components": {"schemas": components, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": {
            "/v1/jobs": {
                "post": _op(
                    "Submit one job or {jobs: [...]}",
                    201,
                    body={"oneOf": [job_schema, bulk_schema]},
                    errors=(400, 409, 413, 422, 429),
                ),
                "get": _op("List jobs (status, run_id, app_version_id, target, cursor, limit)", errors=(422,)),
            },
            "/v1/jobs/{job_id}": {"get": _op("One job's status", errors=(404,))},
            "/v1/jobs/{job_id}/cancel": {"post": _op("Cancel a job", errors=(404, 409))},
            "/v1/jobs/{job_id}/events": {"get": _op("A job's history from the event stream", errors=(404,))},
            "/v1/jobs/{job_id}/logs": {
                "get": _op("The whole output of a job's attempts (?attempt=N)", errors=(404, 422))
            },
            "/v1/runs/{run_id}": {"get": _op("A run's summary and jobs", errors=(404,))},
            "/v1/runs/{run_id}/cancel": {"post": _op("Cancel a run's unfinished jobs", errors=(404,))},
            "/v1/runs/{run_id}/events": {
                "get": _op("A run's history: its jobs' and their batches' events, from the stream", errors=(404,))
            },
            "/v1/tail": {
                "get": _op(
                    "Server-sent events: every event as it is stored, filtered by subject on the server "
                    "(org_id, app_version_id, target, run_id, type; since or Last-Event-ID)",
                    errors=(422,),
                )
            },
            "/v1/stream": {
                "get": _op(
                    "Server-sent events of job changes (filters run_id, job_id, status; resumable with Last-Event-ID)",
                    errors=(422,),
                )
            },
            "/v1/agents": {"get": _op("Agents")},
            "/v1/metrics": {"get": _op("Counts by status, queue depth, installs")},
            "/v1/tokens": {"post": _op("Create a token for an org (admin)", 201, errors=(422,))},
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {"description": "OK"}}}},
            "/readyz": {
                "get": {
                    "summary": "NATS, Postgres and projection lag",
                    "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}},
                }
            },
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text"}}}},
        },
    }
