"""The pure parts of the audit trail: tail filter subjects, ``--until`` parsing,
event lines and JSON log lines."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from eventstore.subjects import Subjects
from qgjob.api.tail import AGENT_TYPES, BATCH_TYPES, JOB_TYPES, TailFilter, TailRefused, subjects
from qgjob.audit import ONE_JOB, event_line
from qgjob.logs import JsonFormatter, dict_config
from qgjob.replay import parse_until

S = Subjects()


# --- tail filters --------------------------------------------------------------------


def test_an_org_tail_asks_nats_for_its_own_job_subjects_only() -> None:
    assert subjects(TailFilter(org_id="acme"), S) == ["qgjob.job.*.*.acme.*"]
    f = TailFilter(org_id="acme", app_version_id="2.4.0", target="emulator")
    assert subjects(f, S) == ["qgjob.job.2%2E4%2E0.emulator.acme.*"]
    # a run is no subject token: the org's job subjects, the run matched in the API
    assert subjects(TailFilter(org_id="acme", run_id="r1"), S) == ["qgjob.job.*.*.acme.*"]


def test_an_admin_tail_adds_batch_and_agent_subjects_unless_filtered_by_org_run_or_build() -> None:
    assert subjects(TailFilter(org_id=None), S) == ["qgjob.job.*.*.*.*", "qgjob.batch.*.*.*", "qgjob.agent.*.*"]
    assert subjects(TailFilter(org_id=None, target="device"), S) == [
        "qgjob.job.*.device.*.*",
        "qgjob.batch.*.device.*",
        "qgjob.agent.device.*",
    ]
    assert subjects(TailFilter(org_id=None, app_version_id="v1"), S) == ["qgjob.job.v1.*.*.*", "qgjob.batch.v1.*.*"]
    assert subjects(TailFilter(org_id="acme"), S) == ["qgjob.job.*.*.acme.*"]
    assert subjects(TailFilter(org_id=None, run_id="r"), S) == ["qgjob.job.*.*.*.*"]


def test_types_pick_the_subject_families() -> None:
    assert subjects(TailFilter(org_id=None, types=frozenset({"JobFailed"})), S) == ["qgjob.job.*.*.*.*"]
    assert subjects(TailFilter(org_id=None, types=frozenset({"AppInstalled"})), S) == ["qgjob.batch.*.*.*"]
    assert subjects(TailFilter(org_id=None, types=frozenset({"AgentLost", "JobPassed"})), S) == [
        "qgjob.job.*.*.*.*",
        "qgjob.agent.*.*",
    ]
    with pytest.raises(TailRefused, match="admin"):
        subjects(TailFilter(org_id="acme", types=frozenset({"AgentLost"})), S)
    with pytest.raises(TailRefused):
        subjects(TailFilter(org_id=None, app_version_id="v1", types=frozenset({"AgentRegistered"})), S)


def test_the_families_cover_the_lifecycle_events_once() -> None:
    assert not (JOB_TYPES & BATCH_TYPES) and not (JOB_TYPES & AGENT_TYPES) and not (BATCH_TYPES & AGENT_TYPES)
    assert {"JobSubmitted", "JobPassed", "JobFailed", "JobCancelled", "JobErrored"} <= JOB_TYPES


def test_subject_ids_read_back_what_the_builders_wrote() -> None:
    assert S.ids(S.job("v1.2.3", "emulator", "acme", "job_1")) == {
        "app_version_id": "v1.2.3",
        "target": "emulator",
        "org_id": "acme",
        "job_id": "job_1",
    }
    assert S.ids(S.batch("build 42/rc", "device", "bat_1")) == {
        "app_version_id": "build 42/rc",
        "target": "device",
        "batch_id": "bat_1",
    }
    assert S.ids(S.agent("device", "a.1")) == {"target": "device", "agent_id": "a.1"}
    assert S.ids(S.token("t1")) == {} and S.ids("other.job.a.b.c.d") == {}


# --- replay --until ------------------------------------------------------------------


def test_until_takes_a_sequence_or_an_iso_time() -> None:
    assert parse_until("0") == 0 and parse_until(" 4711 ") == 4711
    assert parse_until("2025-01-31T14:03:00Z") == datetime(2025, 1, 31, 14, 3, tzinfo=UTC)
    assert parse_until("2025-01-31T16:03+02:00") == datetime(2025, 1, 31, 14, 3, tzinfo=UTC)
    assert parse_until("20250131T140300Z") == datetime(2025, 1, 31, 14, 3, tzinfo=UTC)


@pytest.fixture
def zone_plus_0530() -> Iterator[timezone]:
    """This process in UTC+5:30 for one test."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "QGJ-05:30"
    time.tzset()
    yield timezone(timedelta(hours=5, minutes=30))
    if before is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = before
    time.tzset()


def test_a_time_without_a_zone_is_local_and_a_time_alone_is_today(zone_plus_0530: timezone) -> None:
    assert parse_until("2025-01-31 14:03") == datetime(2025, 1, 31, 8, 33, tzinfo=UTC)
    today = date.today()
    assert parse_until("14:03") == datetime(today.year, today.month, today.day, 14, 3, tzinfo=zone_plus_0530)


@pytest.mark.parametrize("text", ["yesterday", "2025-13-01", "14h03", "-3", "", "1e5"])
def test_until_refuses_what_it_cannot_read_naming_the_flag_and_forms(text: str) -> None:
    with pytest.raises(ValueError, match="--until") as info:
        parse_until(text)
    assert "ISO 8601" in str(info.value) and "sequence" in str(info.value)


# --- event lines -----------------------------------------------------------------------


def test_an_event_line_names_time_sequence_type_attempt_agent_and_batch() -> None:
    event = {
        "seq": 12,
        "at": "2025-01-31T14:03:10Z",
        "type": "JobFailed",
        "job_id": "job_1",
        "org_id": "acme",
        "app_version_id": "2.4.0",
        "target": "emulator",
        "attempt": 2,
        "agent_id": "emu-1",
        "batch_id": "bat_9",
        "error": "boom",
        "final": True,
    }
    line = event_line(event)
    assert line.startswith("2025-01-31T14:03:10Z  #12  JobFailed  org=acme  app=2.4.0  target=emulator  job=job_1")
    assert "attempt=2  agent=emu-1  batch=bat_9" in line and "final" in line and "error='boom'" in line
    short = event_line(event, omit=ONE_JOB)
    assert "job=" not in short and "org=" not in short and "attempt=2" in short
    assert event_line({"seq": 1, "at": "t", "type": "JobSubmitted", "attempt": None}) == "t  #1  JobSubmitted"


# --- JSON logs -------------------------------------------------------------------------


def test_json_log_lines_carry_the_ids_passed_as_extra() -> None:
    record = logging.LogRecord("agents.agent", logging.INFO, __file__, 1, "job %s passed", ("job_1",), None)
    record.job_id, record.batch_id, record.agent_id = "job_1", "bat_1", "emu-1"
    out = json.loads(JsonFormatter().format(record))
    assert out["message"] == "job job_1 passed" and out["level"] == "info" and out["logger"] == "agents.agent"
    assert (out["job_id"], out["batch_id"], out["agent_id"]) == ("job_1", "bat_1", "emu-1")
    assert "run_id" not in out
    assert datetime.fromisoformat(out["time"]).utcoffset() == timedelta(0)


def test_log_config_refuses_an_unknown_format() -> None:
    with pytest.raises(ValueError, match="--log-format"):
        dict_config("info", "xml")
    assert dict_config("info", "json")["loggers"]["uvicorn.error"]["propagate"] is True
