"""Submit-body validation and dedup keys (pure, no servers)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qgjob.api.errors import ApiError, InvalidJson, ValidationFailed
from qgjob.api.submit import Item, Submitter, Taken, dedup_key, idempotency_key
from qgjob.api.validation import parse_jobs

MAX_JOBS = 5
BASE: dict[str, Any] = {"org_id": "acme", "app_version_id": "v1.2.3", "test": "tests/onboarding.spec.js"}


def body(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def job(**overrides: Any) -> dict[str, Any]:
    doc = dict(BASE)
    for key, value in overrides.items():
        if value is _DROP:
            doc.pop(key, None)
        else:
            doc[key] = value
    return doc


_DROP = object()


def rejected(doc: Any, *, status: int = 422, max_jobs: int = MAX_JOBS, raw: bytes | None = None) -> ApiError:
    with pytest.raises(ApiError) as info:
        parse_jobs(raw if raw is not None else body(doc), max_jobs=max_jobs)
    err = info.value
    assert err.status == status, (err.status, str(err))
    return err


def assert_names(err: ApiError, field: str, *allowed: str) -> None:
    """The message and the detail name the field and say what it allows."""
    message = str(err)
    assert message.startswith(f"{field}:") or f"{field}:" in message, message
    for words in allowed:
        assert words in message, (words, message)
    assert err.detail, "a validation error carries detail"
    assert any(d.get("field") == field for d in err.detail), err.detail


# --- the happy paths ---------------------------------------------------------------


def test_minimal_job_gets_defaults() -> None:
    jobs, bulk = parse_jobs(body(BASE), max_jobs=MAX_JOBS)
    assert bulk is False
    assert jobs == [
        {
            "org_id": "acme",
            "app_version_id": "v1.2.3",
            "test": "tests/onboarding.spec.js",
            "target": "emulator",
            "priority": 5,
            "max_retries": 3,
            "run_id": None,
            "labels": {},
            "timeout_s": None,
        }
    ]


def test_full_job_is_kept() -> None:
    doc = job(
        target="browserstack",
        priority=0,
        max_retries=0,
        run_id="run_42",
        labels={"branch": "main", "commit": "abc123"},
        timeout_s=90.5,
    )
    (parsed,), bulk = parse_jobs(body(doc), max_jobs=MAX_JOBS)
    assert bulk is False
    assert parsed == doc


@pytest.mark.parametrize("target", ["emulator", "device", "browserstack"])
def test_every_target_is_accepted(target: str) -> None:
    (parsed,), _ = parse_jobs(body(job(target=target)), max_jobs=MAX_JOBS)
    assert parsed["target"] == target


@pytest.mark.parametrize("priority", [0, 1, 5, 1_000_000])
def test_priority_bounds_accepted(priority: int) -> None:
    (parsed,), _ = parse_jobs(body(job(priority=priority)), max_jobs=MAX_JOBS)
    assert parsed["priority"] == priority


def test_test_of_512_characters_is_accepted() -> None:
    path = "t" * 509 + ".js"
    (parsed,), _ = parse_jobs(body(job(test=path)), max_jobs=MAX_JOBS)
    assert parsed["test"] == path


def test_unicode_values_are_accepted() -> None:
    (parsed,), _ = parse_jobs(body(job(app_version_id="build 42/rc 日本", test="tests/ログイン.spec.js")), max_jobs=5)
    assert parsed["app_version_id"] == "build 42/rc 日本"


# --- single-job errors ------------------------------------------------------------------


def test_unknown_target() -> None:
    err = rejected(job(target="phone"))
    assert isinstance(err, ValidationFailed)
    assert_names(err, "target", "emulator, device, browserstack")
    assert "phone" in str(err)


@pytest.mark.parametrize("test", ["", " ", "   \t\n"])
def test_empty_or_blank_test(test: str) -> None:
    err = rejected(job(test=test))
    assert_names(err, "test", "1 to 512 characters")


def test_test_over_512_characters() -> None:
    err = rejected(job(test="t" * 513))
    assert_names(err, "test", "1 to 512 characters")


def test_negative_priority() -> None:
    err = rejected(job(priority=-1))
    assert_names(err, "priority", "integer", "0", "lower runs first")


def test_priority_too_large() -> None:
    err = rejected(job(priority=1_000_001))
    assert_names(err, "priority", "integer from 0 to 1000000")


@pytest.mark.parametrize("priority", [1.5, "1", True, None, [1]])
def test_non_integer_priority(priority: Any) -> None:
    err = rejected(job(priority=priority))
    assert_names(err, "priority", "an integer")


def test_missing_org_id() -> None:
    err = rejected(job(org_id=_DROP))
    assert_names(err, "org_id", "required", "non-empty string")


def test_missing_app_version_id() -> None:
    err = rejected(job(app_version_id=_DROP))
    assert_names(err, "app_version_id", "required", "non-empty string")


def test_missing_test() -> None:
    err = rejected(job(test=_DROP))
    assert_names(err, "test", "required", "spec path")


@pytest.mark.parametrize("name", ["org_id", "app_version_id", "run_id"])
def test_blank_ids(name: str) -> None:
    err = rejected(job(**{name: "  "}))
    assert_names(err, name, "blank", "non-empty string")


def test_id_too_long() -> None:
    err = rejected(job(org_id="o" * 129))
    assert_names(err, "org_id", "at most 128 characters")


def test_unknown_field() -> None:
    err = rejected(job(colour="red"))
    assert_names(err, "colour", "unknown field", "org_id", "app_version_id", "test", "target", "priority")


def test_org_id_of_wrong_type() -> None:
    err = rejected(job(org_id=5))
    assert_names(err, "org_id", "str", "non-empty string")
    assert "int" in str(err)


def test_labels_of_wrong_type() -> None:
    err = rejected(job(labels=[]))
    assert_names(err, "labels", "object", "string values")
    assert "array" in str(err)


def test_label_value_of_wrong_type_names_labels() -> None:
    err = rejected(job(labels={"branch": 1}))
    assert "labels" in str(err)
    assert "string values" in str(err)


def test_label_key_too_long_names_labels() -> None:
    err = rejected(job(labels={"k" * 65: "v"}))
    assert_names(err, "labels", "keys up to 64")


def test_too_many_labels() -> None:
    err = rejected(job(labels={str(i): "v" for i in range(33)}))
    assert_names(err, "labels", "at most 32")


@pytest.mark.parametrize(("value", "words"), [(21, "0 to 20"), (-1, "0 to 20"), ("3", "integer")])
def test_bad_max_retries(value: Any, words: str) -> None:
    err = rejected(job(max_retries=value))
    assert_names(err, "max_retries", words)


@pytest.mark.parametrize("value", [0, -5, 86_401, "60"])
def test_bad_timeout(value: Any) -> None:
    err = rejected(job(timeout_s=value))
    assert_names(err, "timeout_s", "seconds above 0 and at most 86400")


@pytest.mark.parametrize("raw", [b"{", b"", b"{'org_id': 'acme'}", b"not json", b'{"org_id": "acme",}'])
def test_invalid_json(raw: bytes) -> None:
    err = rejected(None, status=400, raw=raw)
    assert isinstance(err, InvalidJson)
    assert "not valid JSON" in str(err)


@pytest.mark.parametrize("doc", [[BASE], "a job", 5, None, True])
def test_non_object_body(doc: Any) -> None:
    err = rejected(doc)
    assert_names(err, "body", "JSON object", '{"jobs": [...]}')


# --- bulk ----------------------------------------------------------------------------------


def test_bulk_inherits_top_level_defaults() -> None:
    doc = {
        "org_id": "acme",
        "app_version_id": "v1.2.3",
        "target": "device",
        "priority": 1,
        "max_retries": 2,
        "run_id": "run_1",
        "labels": {"branch": "main"},
        "timeout_s": 60,
        "jobs": [
            {"test": "tests/a.spec.js"},
            {"test": "tests/b.spec.js", "priority": 0, "target": "browserstack"},
            {"test": "tests/c.spec.js", "org_id": "other", "app_version_id": "v9", "labels": {"x": "y"}},
        ],
    }
    jobs, bulk = parse_jobs(body(doc), max_jobs=MAX_JOBS)
    assert bulk is True
    assert [j["test"] for j in jobs] == ["tests/a.spec.js", "tests/b.spec.js", "tests/c.spec.js"]
    a, b, c = jobs
    assert a == {
        "org_id": "acme",
        "app_version_id": "v1.2.3",
        "test": "tests/a.spec.js",
        "target": "device",
        "priority": 1,
        "max_retries": 2,
        "run_id": "run_1",
        "labels": {"branch": "main"},
        "timeout_s": 60,
    }
    assert (b["priority"], b["target"], b["org_id"]) == (0, "browserstack", "acme")
    assert (c["org_id"], c["app_version_id"], c["labels"], c["target"]) == ("other", "v9", {"x": "y"}, "device")


def test_bulk_without_top_level_uses_global_defaults() -> None:
    doc = {"jobs": [dict(BASE), dict(BASE, test="tests/b.spec.js")]}
    jobs, bulk = parse_jobs(body(doc), max_jobs=MAX_JOBS)
    assert bulk is True
    for parsed in jobs:
        assert (parsed["target"], parsed["priority"], parsed["max_retries"], parsed["labels"]) == ("emulator", 5, 3, {})


def test_bulk_priority_zero_on_a_job_beats_the_top_level() -> None:
    """0 is a value, not "absent": it must not fall back to the top level."""
    doc = {
        "org_id": "acme",
        "app_version_id": "v1",
        "priority": 7,
        "max_retries": 5,
        "jobs": [{"test": "t", "priority": 0, "max_retries": 0}],
    }
    (parsed,), _ = parse_jobs(body(doc), max_jobs=MAX_JOBS)
    assert (parsed["priority"], parsed["max_retries"]) == (0, 0)


def test_bulk_with_one_bad_target_names_its_index() -> None:
    doc = {"org_id": "acme", "app_version_id": "v1", "jobs": [{"test": "a"}, {"test": "b", "target": "phone"}]}
    err = rejected(doc)
    assert_names(err, "jobs[1].target", "emulator, device, browserstack")


def test_bulk_with_bad_top_level_target() -> None:
    doc = {"org_id": "acme", "app_version_id": "v1", "target": "tablet", "jobs": [{"test": "a"}]}
    err = rejected(doc)
    assert_names(err, "target", "emulator, device, browserstack")


def test_bulk_with_one_blank_test_names_its_index() -> None:
    doc = {"org_id": "acme", "app_version_id": "v1", "jobs": [{"test": "a"}, {"test": "b"}, {"test": "  "}]}
    err = rejected(doc)
    assert_names(err, "jobs[2].test", "blank", "1 to 512 characters")


def test_bulk_with_unknown_field_on_a_job() -> None:
    doc = {"org_id": "acme", "app_version_id": "v1", "jobs": [{"test": "a", "colour": "red"}]}
    err = rejected(doc)
    assert_names(err, "jobs[0].colour", "unknown field", "test", "target")


def test_bulk_with_unknown_top_level_field_lists_the_bulk_fields() -> None:
    doc = {"org_id": "acme", "app_version_id": "v1", "test": "top.spec.js", "jobs": [{"test": "a"}]}
    err = rejected(doc)
    assert_names(err, "test", "unknown field", "jobs")
    allowed = str(err).split("allowed fields are", 1)[1]
    assert "test" not in [f.strip() for f in allowed.split(",")]


def test_bulk_missing_org_id_everywhere() -> None:
    doc = {"app_version_id": "v1", "jobs": [{"test": "a", "org_id": "acme"}, {"test": "b"}]}
    err = rejected(doc)
    assert_names(err, "jobs[1].org_id", "required", "top level", "non-empty string")


def test_bulk_missing_app_version_id_everywhere() -> None:
    doc = {"org_id": "acme", "jobs": [{"test": "a"}, {"test": "b"}]}
    err = rejected(doc)
    assert_names(err, "jobs[0].app_version_id", "required")
    assert "(and 1 more)" in str(err)
    assert [d["field"] for d in err.detail] == ["jobs[0].app_version_id", "jobs[1].app_version_id"]


def test_bulk_job_missing_test() -> None:
    doc = {"org_id": "acme", "app_version_id": "v1", "jobs": [{"test": "a"}, {"priority": 1}]}
    err = rejected(doc)
    assert_names(err, "jobs[1].test", "required", "spec path")


def test_bulk_item_that_is_not_an_object() -> None:
    doc = {"org_id": "acme", "app_version_id": "v1", "jobs": [{"test": "a"}, "tests/b.spec.js"]}
    err = rejected(doc)
    assert_names(err, "jobs[1]", "object", "job objects")


def test_empty_jobs_list() -> None:
    err = rejected({"jobs": []})
    assert_names(err, "jobs", "empty", f"1 to {MAX_JOBS} job objects")


@pytest.mark.parametrize("value", ["x", None, {"test": "a"}, 3])
def test_jobs_not_a_list(value: Any) -> None:
    err = rejected({"org_id": "acme", "app_version_id": "v1", "jobs": value})
    assert_names(err, "jobs", f"1 to {MAX_JOBS} job objects")


def test_too_many_jobs() -> None:
    doc = {"org_id": "acme", "app_version_id": "v1", "jobs": [{"test": f"t{i}"} for i in range(MAX_JOBS + 1)]}
    err = rejected(doc)
    assert_names(err, "jobs", f"at most {MAX_JOBS}")
    assert str(MAX_JOBS + 1) in str(err)


def test_exactly_max_jobs_is_fine() -> None:
    doc = {"org_id": "acme", "app_version_id": "v1", "jobs": [{"test": f"t{i}"} for i in range(MAX_JOBS)]}
    jobs, bulk = parse_jobs(body(doc), max_jobs=MAX_JOBS)
    assert bulk and len(jobs) == MAX_JOBS


_FIELDS = ["org_id", "app_version_id", "test", "target", "priority", "max_retries", "run_id", "labels", "timeout_s"]
_scalar = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10)
    | st.sampled_from(["emulator", "device", "browserstack", "acme", "v1", " ", ""])
)
_json = st.recursive(
    _scalar,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_job_like = st.dictionaries(st.sampled_from([*_FIELDS, "colour"]), _json, max_size=8)
_body_like = (
    _json
    | _job_like
    | st.fixed_dictionaries({"jobs": st.lists(_job_like | _json, max_size=7)}, optional={f: _json for f in _FIELDS})
)


@settings(max_examples=300, deadline=None)
@given(_body_like)
def test_any_json_either_parses_or_is_a_clean_api_error(doc: Any) -> None:
    """Garbage in never becomes a 500: it parses, or it is a 4xx naming a field."""
    try:
        jobs, _ = parse_jobs(body(doc), max_jobs=MAX_JOBS)
    except ApiError as err:
        assert err.status in (400, 422)
        assert str(err)
        if isinstance(err, ValidationFailed):
            assert err.detail
            assert str(err).startswith(err.detail[0]["field"])
            if err.detail[0]["field"] != "body":
                assert "allowed" in str(err), str(err)
    else:
        for parsed in jobs:
            assert parsed["target"] in ("emulator", "device", "browserstack")
            assert isinstance(parsed["priority"], int) and parsed["priority"] >= 0


# --- dedup keys --------------------------------------------------------------------------------


def test_dedup_key_is_stable() -> None:
    a = dedup_key("acme", "v1.2.3", "tests/a.spec.js", "emulator")
    assert a == dedup_key("acme", "v1.2.3", "tests/a.spec.js", "emulator")
    assert len(a) == 32
    assert all(c in "0123456789abcdef" for c in a)


@pytest.mark.parametrize(
    "other",
    [
        ("other", "v1.2.3", "tests/a.spec.js", "emulator"),
        ("acme", "v1.2.4", "tests/a.spec.js", "emulator"),
        ("acme", "v1.2.3", "tests/b.spec.js", "emulator"),
        ("acme", "v1.2.3", "tests/a.spec.js", "device"),
    ],
)
def test_dedup_key_differs_when_any_part_differs(other: tuple[str, str, str, str]) -> None:
    assert dedup_key("acme", "v1.2.3", "tests/a.spec.js", "emulator") != dedup_key(*other)


def test_dedup_key_parts_do_not_run_together() -> None:
    assert dedup_key("ab", "c", "t", "emulator") != dedup_key("a", "bc", "t", "emulator")


@settings(max_examples=300, deadline=None)
@given(
    st.tuples(st.text(min_size=1), st.text(min_size=1), st.text(min_size=1), st.sampled_from(["emulator", "device"])),
    st.tuples(st.text(min_size=1), st.text(min_size=1), st.text(min_size=1), st.sampled_from(["emulator", "device"])),
)
def test_dedup_key_is_a_function_of_all_four_parts(a: tuple[str, ...], b: tuple[str, ...]) -> None:
    if a == b:
        assert dedup_key(*a) == dedup_key(*b)
    elif not any("\0" in part for part in (*a, *b)):
        assert dedup_key(*a) != dedup_key(*b)


def test_idempotency_key_is_scoped_to_the_org() -> None:
    assert idempotency_key("acme", "k1") == idempotency_key("acme", "k1")
    assert idempotency_key("acme", "k1") != idempotency_key("other", "k1")
    assert idempotency_key("acme", "k1") != idempotency_key("acme", "k2")


# --- marking duplicates --------------------------------------------------------------------------


def _items(*tests: str, org: str = "acme") -> list[Item]:
    out = []
    for n, test in enumerate(tests):
        parsed = dict(BASE, org_id=org, test=test, target="emulator")
        out.append(Item(job=parsed, key=dedup_key(org, BASE["app_version_id"], test, "emulator"), job_id=f"job_{n}"))
    return out


def _submitter() -> Submitter:
    return Submitter.__new__(Submitter)  # no store, no pool: only the pure logic is used


def test_fresh_keys_are_not_duplicates() -> None:
    items = _items("a", "b")
    _submitter()._mark_duplicates(items, {})
    assert [i.duplicate_of for i in items] == [None, None]
    assert [i.status for i in items] == ["queued", "queued"]


def test_active_key_marks_a_duplicate_of_the_existing_job() -> None:
    items = _items("a", "b")
    keys = {items[0].key: Taken(job_id="job_existing", status="running")}
    _submitter()._mark_duplicates(items, keys)
    assert items[0].duplicate_of == "job_existing"
    assert items[0].status == "running"
    assert items[1].duplicate_of is None


def test_same_test_twice_in_one_request_is_a_duplicate_of_the_first() -> None:
    items = _items("a", "b", "a", "a")
    _submitter()._mark_duplicates(items, {})
    assert [i.duplicate_of for i in items] == [None, None, "job_0", "job_0"]


def test_same_test_twice_with_an_active_key_points_both_at_the_existing_job() -> None:
    items = _items("a", "a")
    keys = {items[0].key: Taken(job_id="job_old", status="queued")}
    _submitter()._mark_duplicates(items, keys)
    assert [i.duplicate_of for i in items] == ["job_old", "job_old"]


def test_same_test_in_another_org_is_not_a_duplicate() -> None:
    a = _items("a", org="acme")
    b = _items("a", org="other")
    b[0].job_id = "job_9"
    items = a + b
    _submitter()._mark_duplicates(items, {})
    assert [i.duplicate_of for i in items] == [None, None]


def test_appends_put_one_fenced_claim_per_group_last() -> None:
    """New jobs first, then one KeysClaimed per (org, app version, target),
    fenced by the claim subject's last sequence, so a racing submit loses."""
    from eventstore.events import JobSubmitted, KeysClaimed
    from eventstore.subjects import Subjects

    class _Store:
        subjects = Subjects("qgjob")

    submitter = _submitter()
    submitter.store = _Store()  # type: ignore[assignment]
    items = _items("a", "b") + _items("c", org="other")
    items[2].job_id = "job_9"
    for item in items:
        item.job.update(priority=5, max_retries=3, run_id="run_1", labels={}, timeout_s=None)
    fences = {("acme", "v1.2.3", "emulator"): 41}
    appends = submitter._appends(items, fences)
    assert len(appends) == 5
    job_a, job_b, _job_c, claim_acme, claim_other = appends
    assert isinstance(job_a.event, JobSubmitted) and job_a.event.job_id == "job_0"
    assert job_a.event.dedup_key == items[0].key and job_a.expected == 0
    assert job_b.subject == Subjects("qgjob").job("v1.2.3", "emulator", "acme", "job_1")
    assert isinstance(claim_acme.event, KeysClaimed)
    assert claim_acme.event.keys == [items[0].key, items[1].key]
    assert claim_acme.event.job_ids == ["job_0", "job_1"]
    assert claim_acme.subject == Subjects("qgjob").claims("acme", "v1.2.3", "emulator")
    assert claim_acme.expected == 41
    assert claim_other.expected == 0  # never claimed
    assert claim_other.event.job_ids == ["job_9"]  # type: ignore[attr-defined]
