"""Request bodies, validated by msgspec, with errors that name the field and
what it allows."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec

from qgjob.api.errors import InvalidJson, ValidationFailed

Target = Literal["emulator", "device", "browserstack"]
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
TestPath = Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
Priority = Annotated[int, msgspec.Meta(ge=0, le=1_000_000)]
Retries = Annotated[int, msgspec.Meta(ge=0, le=20)]
Timeout = Annotated[float, msgspec.Meta(gt=0, le=86_400)]
Labels = Annotated[
    dict[Annotated[str, msgspec.Meta(max_length=64)], Annotated[str, msgspec.Meta(max_length=512)]],
    msgspec.Meta(max_length=32),
]

ALLOWED: dict[str, str] = {
    "org_id": "a non-empty string of at most 128 characters",
    "app_version_id": "a non-empty string of at most 128 characters",
    "run_id": "a non-empty string of at most 128 characters",
    "test": "a spec path of 1 to 512 characters",
    "target": "one of emulator, device, browserstack",
    "priority": "an integer from 0 to 1000000 (lower runs first; default 5)",
    "max_retries": "an integer from 0 to 20 (default 3)",
    "timeout_s": "a number of seconds above 0 and at most 86400",
    "labels": "an object of at most 32 string values (keys up to 64, values up to 512 characters)",
    "jobs": "a list of 1 to {max_jobs} job objects",
}


class JobIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    org_id: Id
    app_version_id: Id
    test: TestPath
    target: Target = "emulator"
    priority: Priority = 5
    max_retries: Retries = 3
    run_id: Id | None = None
    labels: Labels = {}
    timeout_s: Timeout | None = None


class BulkJobIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One job of a bulk request; missing fields come from the request's top level."""

    test: TestPath
    org_id: Id | None = None
    app_version_id: Id | None = None
    target: Target | None = None
    priority: Priority | None = None
    max_retries: Retries | None = None
    run_id: Id | None = None
    labels: Labels | None = None
    timeout_s: Timeout | None = None


class BulkIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    jobs: list[BulkJobIn]
    org_id: Id | None = None
    app_version_id: Id | None = None
    target: Target | None = None
    priority: Priority | None = None
    max_retries: Retries | None = None
    run_id: Id | None = None
    labels: Labels | None = None
    timeout_s: Timeout | None = None


_PATH = re.compile(r" - at (?:`key` in )?`\$(?P<path>[^`]*)`$")
_MISSING = re.compile(r"missing required field `(?P<field>[^`]+)`")
_UNKNOWN = re.compile(r"unknown field `(?P<field>[^`]+)`")
_single_decoder = msgspec.json.Decoder(JobIn)
_bulk_decoder = msgspec.json.Decoder(BulkIn)
_DEFAULTS = {"target": "emulator", "priority": 5, "max_retries": 3, "labels": {}}


def _field_error(exc: msgspec.ValidationError, max_jobs: int, top_fields: tuple[str, ...]) -> dict[str, Any]:
    text = str(exc)
    match = _PATH.search(text)
    path = match.group("path") if match else ""
    problem = text[: match.start()] if match else text
    missing = _MISSING.search(problem)
    unknown = _UNKNOWN.search(problem)
    location = path.lstrip(".")
    if missing:
        name = missing.group("field")
        location = f"{location}.{name}" if location else name
        message = f"{location}: is required"
    elif unknown:
        name = unknown.group("field")
        location = f"{location}.{name}" if location else name
        fields = JobIn.__struct_fields__ if "[" in location else top_fields
        message = f"{location}: unknown field; allowed fields are {', '.join(fields)}"
        return {"field": location, "message": message}
    else:
        # ``labels[...]`` is a value inside labels: the field is still labels
        name = location.replace("[...]", "").rsplit(".", 1)[-1] if location else ""
        message = f"{location or 'body'}: {problem[0].lower() + problem[1:] if problem else 'invalid'}"
    allowed = ALLOWED.get(re.sub(r"\[\d+\]", "", name), "").format(max_jobs=max_jobs)
    if allowed:
        message += f"; allowed: {allowed}"
    return {"field": location or "body", "message": message}


def parse_jobs(body: bytes, *, max_jobs: int) -> tuple[list[dict[str, Any]], bool]:
    """Validate a submit body (one job, or ``{"jobs": [...]}``) into job dicts;
    the flag says whether it was the bulk form."""
    try:
        raw = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise InvalidJson(f"the request body is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ValidationFailed(
            'body: expected a JSON object (one job, or {"jobs": [...]})',
            detail=[{"field": "body", "message": "expected a JSON object"}],
        )
    top_fields = JobIn.__struct_fields__
    try:
        if "jobs" in raw:
            top_fields = BulkIn.__struct_fields__
            jobs_value = raw["jobs"]
            if isinstance(jobs_value, list) and len(jobs_value) > max_jobs:
                message = f"jobs: {len(jobs_value)} jobs in one request; allowed: at most {max_jobs}"
                raise ValidationFailed(message, detail=[{"field": "jobs", "message": message}])
            if isinstance(jobs_value, list) and not jobs_value:
                message = f"jobs: is empty; allowed: {ALLOWED['jobs'].format(max_jobs=max_jobs)}"
                raise ValidationFailed(message, detail=[{"field": "jobs", "message": message}])
            bulk = _bulk_decoder.decode(body)
            return _expand(bulk), True
        single = _single_decoder.decode(body)
    except msgspec.ValidationError as exc:
        error = _field_error(exc, max_jobs, top_fields)
        raise ValidationFailed(error["message"], detail=[error]) from exc
    jobs = [msgspec.structs.asdict(single)]
    _check_blank(jobs, bulk=False)
    return jobs, False


def _check_blank(jobs: list[dict[str, Any]], *, bulk: bool) -> None:
    """Strings made only of white space are as good as empty."""
    problems = []
    for i, job in enumerate(jobs):
        for name in ("org_id", "app_version_id", "test", "run_id"):
            value = job.get(name)
            if isinstance(value, str) and not value.strip():
                where = f"jobs[{i}].{name}" if bulk else name
                problems.append({"field": where, "message": f"{where}: is blank; allowed: {ALLOWED[name]}"})
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ValidationFailed(problems[0]["message"] + more, detail=problems[:100])


def _expand(bulk: BulkIn) -> list[dict[str, Any]]:
    top = msgspec.structs.asdict(bulk)
    top.pop("jobs")
    out = []
    problems = []
    for i, job in enumerate(bulk.jobs):
        merged: dict[str, Any] = {}
        for name in JobIn.__struct_fields__:
            value = getattr(job, name)
            if value is None:
                value = top.get(name)
            if value is None:
                value = _DEFAULTS.get(name)
            merged[name] = value
        for required in ("org_id", "app_version_id"):
            if merged[required] is None:
                problems.append(
                    {
                        "field": f"jobs[{i}].{required}",
                        "message": f"jobs[{i}].{required}: is required (on the job or at the top level); "
                        f"allowed: {ALLOWED[required]}",
                    }
                )
        out.append(merged)
    if problems:
        first = problems[0]["message"]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ValidationFailed(first + more, detail=problems[:100])
    _check_blank(out, bulk=True)
    return out
