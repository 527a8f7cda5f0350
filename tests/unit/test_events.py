"""Event payloads (JSON via msgspec) and server-generated ids (pure, no servers)."""

from __future__ import annotations

import base64
import json
import re
import types
import typing
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventstore.events import (
    EVENT_TYPES,
    SCHEMA_VERSION,
    AgentLost,
    AgentRegistered,
    AgentStopped,
    AppInstalled,
    BatchAssigned,
    BatchFinished,
    BatchJob,
    Event,
    JobAssigned,
    JobCancelled,
    JobErrored,
    JobFailed,
    JobPassed,
    JobRequeued,
    JobRetryScheduled,
    JobStarted,
    JobSubmitted,
    KeysClaimed,
    ResultRejected,
    SubmissionRecorded,
    TokenCreated,
    decode_event,
    encode_event,
    is_terminal,
)
from eventstore.ids import _ALPHABET, _spell, is_id, new_id

AT = datetime(2025, 3, 14, 9, 26, 53, 589000, tzinfo=UTC)
BATCH_JOBS = [
    BatchJob(job_id="job_a", org_id="acme", test="tests/login.spec.js", attempt=1, max_retries=3),
    BatchJob(
        job_id="job_b",
        org_id="acme",
        test="tests/cart.spec.js",
        attempt=2,
        max_retries=3,
        timeout_s=120.5,
        dedup_key="0f" * 16,
    ),
]

# One realistic instance of every event type.
SAMPLES: dict[str, Event] = {
    "JobSubmitted": JobSubmitted(
        job_id="job_01jd3x",
        org_id="acme",
        app_version_id="v1.2.3",
        test="tests/onboarding.spec.js",
        target="emulator",
        priority=2,
        max_retries=4,
        run_id="run_01jd3x",
        labels={"branch": "main", "commit": "abc123", "ci": "https://ci.example/1"},
        timeout_s=300.0,
        dedup_key="ab" * 16,
        at=AT,
    ),
    "JobAssigned": JobAssigned(job_id="job_a", batch_id="bat_1", agent_id="agt_1", at=AT),
    "JobStarted": JobStarted(job_id="job_a", batch_id="bat_1", agent_id="agt_1", attempt=1, at=AT),
    "JobPassed": JobPassed(
        job_id="job_a", batch_id="bat_1", agent_id="agt_1", attempt=2, duration_ms=1234, dedup_key="k", at=AT
    ),
    "JobFailed": JobFailed(
        job_id="job_a",
        batch_id="bat_1",
        agent_id="agt_1",
        attempt=1,
        duration_ms=987,
        error="AssertionError: expected 'Welcome' — got 'Error'",
        final=False,
        at=AT,
    ),
    "JobRetryScheduled": JobRetryScheduled(job_id="job_a", attempt=2, not_before=AT + timedelta(seconds=7.25), at=AT),
    "JobRequeued": JobRequeued(job_id="job_a", reason="agent lost", at=AT),
    "JobCancelled": JobCancelled(job_id="job_a", reason="cancelled by ci", dedup_key="k", at=AT),
    "JobErrored": JobErrored(job_id="job_a", error="infrastructure failures exhausted", dedup_key="k", at=AT),
    "BatchAssigned": BatchAssigned(
        batch_id="bat_1",
        agent_id="agt_1",
        app_version_id="build 42/rc",
        target="device",
        jobs=BATCH_JOBS,
        install=True,
        at=AT,
    ),
    "AppInstalled": AppInstalled(
        batch_id="bat_1", agent_id="agt_1", app_version_id="build 42/rc", target="device", duration_ms=4200, at=AT
    ),
    "BatchFinished": BatchFinished(batch_id="bat_1", agent_id="agt_1", at=AT),
    "AgentRegistered": AgentRegistered(
        agent_id="agt_1", target="browserstack", slots=3, name="ci-runner-7", runner="appwright", at=AT
    ),
    "AgentStopped": AgentStopped(agent_id="agt_1", at=AT),
    "AgentLost": AgentLost(agent_id="agt_1", reason="no heartbeat for 30s", at=AT),
    "ResultRejected": ResultRejected(
        agent_id="agt_1", job_id="job_a", batch_id="bat_1", report="JobPassed", reason="the job moved on", at=AT
    ),
    "KeysClaimed": KeysClaimed(
        org_id="acme",
        app_version_id="2.4.0",
        target="device",
        keys=["ab" * 16, "cd" * 16],
        job_ids=["job_a", "job_b"],
        at=AT,
    ),
    "SubmissionRecorded": SubmissionRecorded(
        key="idem-1",
        org_id="acme",
        run_id="run_1",
        job_ids=["job_a", "job_b", "job_c"],
        duplicate=[False, True, False],
        at=AT,
    ),
    "TokenCreated": TokenCreated(token_id="tok_1", org_id=None, admin=True, sha256="e3" * 32, at=AT),
}


def test_samples_cover_every_event_type() -> None:
    assert set(SAMPLES) == set(EVENT_TYPES)
    for name, event in SAMPLES.items():
        assert type(event) is EVENT_TYPES[name]


@pytest.mark.parametrize("name", sorted(EVENT_TYPES))
def test_every_event_type_roundtrips(name: str) -> None:
    event = SAMPLES[name]
    data = encode_event(event)
    back = decode_event(data)
    assert type(back) is type(event)
    assert back == event
    # and encoding is stable
    assert encode_event(back) == data


@pytest.mark.parametrize("name", sorted(EVENT_TYPES))
def test_payload_is_self_describing_json(name: str) -> None:
    event = SAMPLES[name]
    doc = json.loads(encode_event(event))
    assert isinstance(doc, dict)
    assert doc["type"] == name
    assert doc["event_id"] == event.event_id
    assert doc["v"] == SCHEMA_VERSION
    parsed_at = datetime.fromisoformat(doc["at"].replace("Z", "+00:00"))
    assert parsed_at == AT
    assert parsed_at.utcoffset() == timedelta(0)


def test_defaults_fill_event_id_and_time() -> None:
    before = datetime.now(UTC)
    a = JobCancelled(job_id="job_a")
    b = JobCancelled(job_id="job_a")
    after = datetime.now(UTC)
    assert is_id(a.event_id, "evt")
    assert a.event_id != b.event_id  # each event gets its own id (Nats-Msg-Id)
    assert before <= a.at <= after
    assert a.at.tzinfo is not None and a.at.utcoffset() == timedelta(0)
    assert a.v == SCHEMA_VERSION


def test_events_are_frozen() -> None:
    event = SAMPLES["JobAssigned"]
    with pytest.raises(AttributeError):
        event.job_id = "other"  # type: ignore[misc]


@pytest.mark.parametrize("name", sorted(EVENT_TYPES))
def test_unknown_fields_are_ignored(name: str) -> None:
    event = SAMPLES[name]
    doc = json.loads(encode_event(event))
    doc["added_in_v7"] = {"nested": [1, 2, 3]}
    doc["another"] = "x"
    back = decode_event(json.dumps(doc).encode())
    assert back == event


def test_unknown_fields_in_nested_batch_job_are_ignored() -> None:
    event = SAMPLES["BatchAssigned"]
    doc = json.loads(encode_event(event))
    doc["jobs"][0]["device_profile"] = "pixel-8"
    assert decode_event(json.dumps(doc).encode()) == event


def test_older_payload_without_optional_fields_decodes_with_defaults() -> None:
    data = json.dumps(
        {
            "type": "JobSubmitted",
            "event_id": "evt_x",
            "at": "2025-03-14T09:26:53Z",
            "v": 1,
            "job_id": "job_a",
            "org_id": "acme",
            "app_version_id": "v1",
            "test": "t.spec.js",
            "target": "emulator",
            "run_id": "run_1",
        }
    ).encode()
    event = decode_event(data)
    assert isinstance(event, JobSubmitted)
    assert (event.priority, event.max_retries, event.labels, event.timeout_s, event.dedup_key) == (5, 3, {}, None, "")


def test_unknown_type_raises_validation_error() -> None:
    data = json.dumps({"type": "JobTeleported", "event_id": "evt_x", "at": "2025-03-14T09:26:53Z", "v": 1}).encode()
    with pytest.raises(msgspec.ValidationError):
        decode_event(data)


def test_missing_type_raises_validation_error() -> None:
    with pytest.raises(msgspec.ValidationError):
        decode_event(b'{"event_id": "evt_x", "job_id": "job_a"}')


def test_wrong_field_type_raises_validation_error() -> None:
    doc = json.loads(encode_event(SAMPLES["JobStarted"]))
    doc["attempt"] = "one"
    with pytest.raises(msgspec.ValidationError):
        decode_event(json.dumps(doc).encode())


def test_invalid_json_raises_decode_error() -> None:
    with pytest.raises(msgspec.DecodeError):
        decode_event(b"{not json")


# --- is_terminal ------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EVENT_TYPES))
def test_is_terminal(name: str) -> None:
    event = SAMPLES[name]
    expected = name in {"JobPassed", "JobCancelled", "JobErrored"}
    assert is_terminal(event) is expected


def test_failed_is_terminal_only_when_final() -> None:
    failed = SAMPLES["JobFailed"]
    assert isinstance(failed, JobFailed)
    assert is_terminal(failed) is False
    assert is_terminal(msgspec.structs.replace(failed, final=True)) is True


# --- a generated strategy over every event type ------------------------------

_text = st.text(max_size=20)
_aware = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2100, 1, 1),
    timezones=st.just(UTC),
)
_int = st.integers(min_value=-(2**63), max_value=2**63 - 1)


def _strategy_for(tp: Any) -> st.SearchStrategy[Any]:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is str:
        return _text
    if tp is bool:
        return st.booleans()
    if tp is int:
        return _int
    if tp is float:
        return st.floats(allow_nan=False, allow_infinity=False)
    if tp is datetime:
        return _aware
    if tp is type(None):
        return st.none()
    if origin is dict:
        return st.dictionaries(_strategy_for(args[0]), _strategy_for(args[1]), max_size=4)
    if origin is list:
        return st.lists(_strategy_for(args[0]), max_size=4)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(_strategy_for(a) for a in args))
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return _struct_strategy(tp)
    raise AssertionError(f"no strategy for {tp!r}")


def _struct_strategy(cls: type[msgspec.Struct]) -> st.SearchStrategy[Any]:
    hints = typing.get_type_hints(cls)
    kwargs = {f: _strategy_for(hints[f]) for f in cls.__struct_fields__ if f != "v"}
    return st.builds(cls, **kwargs)


any_event = st.one_of(*(_struct_strategy(cls) for cls in EVENT_TYPES.values()))


@settings(max_examples=300, deadline=None)
@given(any_event)
def test_generated_events_roundtrip(event: Event) -> None:
    data = encode_event(event)
    back = decode_event(data)
    assert type(back) is type(event)
    assert back == event
    doc = json.loads(data)
    assert doc["type"] == type(event).__name__
    assert {"type", "event_id", "at", "v"} <= set(doc)


# --- ids ------------------------------------------------------------------------

_URL_SAFE = re.compile(r"^[A-Za-z0-9_\-~.]+$")


def test_new_id_shape() -> None:
    value = new_id("job")
    assert value.startswith("job_")
    assert len(value) == len("job_") + 26
    assert _URL_SAFE.match(value)
    assert is_id(value, "job")


@settings(max_examples=500, deadline=None)
@given(st.integers(min_value=0, max_value=2**48 - 1), st.binary(min_size=10, max_size=10))
def test_an_id_spells_its_bits_in_crockford_base32(ms: int, rand: bytes) -> None:
    """The same characters as RFC 4648 base32 of the 16 bytes, in this alphabet."""
    rfc4648 = base64.b32encode(ms.to_bytes(6, "big") + rand)[:26].decode()
    assert _spell(ms, rand) == rfc4648.translate(str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _ALPHABET))


def test_ids_sort_by_time() -> None:
    base = 1_700_000_000_000
    ids = [new_id("job", now_ms=base + step) for step in (0, 1, 2, 1000, 60_000, 86_400_000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=2**48 - 1), st.integers(min_value=0, max_value=2**48 - 1))
def test_ids_sort_by_time_property(a: int, b: int) -> None:
    ia, ib = new_id("job", now_ms=a), new_id("job", now_ms=b)
    if a < b:
        assert ia < ib
    elif a > b:
        assert ia > ib
    assert _URL_SAFE.match(ia) and _URL_SAFE.match(ib)
    assert is_id(ia, "job") and is_id(ib, "job")


def test_ids_in_the_same_millisecond_are_distinct() -> None:
    ids = {new_id("evt", now_ms=1_700_000_000_000) for _ in range(1000)}
    assert len(ids) == 1000


def test_real_clock_ids_are_non_decreasing_across_milliseconds() -> None:
    import time

    first = new_id("job")
    time.sleep(0.003)
    second = new_id("job")
    assert first < second


def test_id_alphabet_is_lowercase_crockford() -> None:
    assert _ALPHABET == "".join(sorted(_ALPHABET))
    assert not set("ilou") & set(_ALPHABET)


@pytest.mark.parametrize(
    ("value", "prefix"),
    [
        ("", "job"),
        ("job", "job"),
        ("job_", "job"),
        ("job_" + "0" * 25, "job"),  # too short
        ("job_" + "0" * 27, "job"),  # too long
        ("job_" + "0" * 25 + "u", "job"),  # 'u' is not in the alphabet
        ("job_" + "0" * 25 + "A", "job"),  # upper case
        ("job_" + "0" * 25 + "-", "job"),
        ("bat_" + "0" * 26, "job"),  # other kind
        ("job-" + "0" * 26, "job"),  # wrong separator
        ("job_" + "0" * 25 + "/", "job"),
        ("job_../../etc/passwd", "job"),
    ],
)
def test_is_id_rejects(value: str, prefix: str) -> None:
    assert is_id(value, prefix) is False


def test_is_id_rejects_an_id_of_another_kind() -> None:
    assert is_id(new_id("bat"), "bat")
    assert not is_id(new_id("bat"), "job")
