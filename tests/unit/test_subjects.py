"""Subject naming and the reversible, readable token encoding (pure, no servers)."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventstore.subjects import EMPTY_TOKEN, Subjects, decode_token, encode_token

# White space as NATS (and humans) understand it: any character Python calls
# space, plus the ASCII separators the server checks explicitly.
_FORBIDDEN_PUNCT = {".", "*", ">"}


def assert_valid_token(token: str) -> None:
    """A token NATS accepts as one subject token, and that reads cleanly."""
    assert token, "a subject token may not be empty"
    for ch in token:
        assert ch not in _FORBIDDEN_PUNCT, f"{ch!r} in token {token!r}"
        assert not ch.isspace(), f"white space {ch!r} in token {token!r}"
        assert ch.isprintable(), f"unprintable {ch!r} in token {token!r}"
        assert unicodedata.category(ch)[0] != "C", f"control/format char {ch!r} in token {token!r}"


# --- properties ---------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(st.text())
def test_roundtrip_any_text(value: str) -> None:
    assert decode_token(encode_token(value)) == value


@settings(max_examples=400, deadline=None)
@given(st.text())
def test_encoded_token_is_a_valid_subject_token(value: str) -> None:
    assert_valid_token(encode_token(value))


def _escape_each_character(value: str) -> str:
    """The encoding spelt out one character at a time."""
    if value == "":
        return EMPTY_TOKEN
    safe = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+=@:,/~")
    return "".join(
        ch
        if ch in safe or (ord(ch) > 127 and ch.isprintable() and not ch.isspace())
        else "".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))
        for ch in value
    )


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(), st.from_regex(r"[A-Za-z0-9._~-]{0,12}", fullmatch=True)))
def test_the_plain_fast_path_and_the_cache_encode_as_each_character_would(value: str) -> None:
    assert encode_token(value) == _escape_each_character(value)
    assert encode_token(value) == _escape_each_character(value)  # again, from the cache


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8")))
def test_roundtrip_any_utf8_text_including_controls(value: str) -> None:
    token = encode_token(value)
    assert_valid_token(token)
    assert decode_token(token) == value


@settings(max_examples=300, deadline=None)
@given(st.text(), st.text())
def test_distinct_values_give_distinct_tokens(a: str, b: str) -> None:
    if a != b:
        assert encode_token(a) != encode_token(b)
    else:
        assert encode_token(a) == encode_token(b)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=8), min_size=2, max_size=8, unique=True))
def test_injective_over_many_values(values: list[str]) -> None:
    tokens = [encode_token(v) for v in values]
    assert len(set(tokens)) == len(values)


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet="%0123456789ABCDEFabcdef.", max_size=12))
def test_percent_heavy_values_roundtrip(value: str) -> None:
    """Values that already look like escapes must not be confused with them."""
    assert decode_token(encode_token(value)) == value


@settings(max_examples=300, deadline=None)
@given(st.text(), st.text(), st.text(), st.text())
def test_job_subject_roundtrips(app: str, target: str, org: str, job: str) -> None:
    subjects = Subjects()
    subject = subjects.job(app, target, org, job)
    parts = subject.split(".")
    assert len(parts) == 6
    assert parts[:2] == ["qgjob", "job"]
    for part in parts[2:]:
        assert_valid_token(part)
    assert subjects.parse_job(subject) == (app, target, org, job)


@settings(max_examples=100, deadline=None)
@given(st.text(), st.text(), st.text(), st.text())
def test_job_subject_roundtrips_with_custom_prefix(app: str, target: str, org: str, job: str) -> None:
    subjects = Subjects("t1234abcd")
    subject = subjects.job(app, target, org, job)
    assert subject.startswith("t1234abcd.job.")
    assert subjects.parse_job(subject) == (app, target, org, job)


# --- explicit examples --------------------------------------------------------

EXAMPLES = [
    "v1.2.3",
    "build 42/rc",
    "*",
    ">",
    "",
    "%",
    "%25",
    "%%",
    "%2",
    "日本語",
    " ",
    "  ",
    "\t",
    "\n",
    "\r\n",
    "a\tb\nc",
    "\x00",
    "\x7f",
    "\u00a0",  # no-break space
    "\u2028",  # line separator
    "\u200b",  # zero-width space
    "\u3000",  # ideographic space
    "café",
    "🚀 launch",
    "qgjob.>",
    "a.*.>",
    "acme-app_1",
    "tests/onboarding.spec.js",
]


@pytest.mark.parametrize("value", EXAMPLES)
def test_examples_roundtrip_and_are_valid(value: str) -> None:
    token = encode_token(value)
    assert_valid_token(token)
    assert decode_token(token) == value


def test_examples_are_pairwise_distinct() -> None:
    tokens = [encode_token(v) for v in EXAMPLES]
    assert len(set(tokens)) == len(set(EXAMPLES))


@pytest.mark.parametrize(
    ("value", "token"),
    [
        ("v1.2.3", "v1%2E2%2E3"),
        ("build 42/rc", "build%2042/rc"),
        ("acme-app_1", "acme-app_1"),
        ("emulator", "emulator"),
        ("*", "%2A"),
        (">", "%3E"),
        ("%", "%25"),
        ("%25", "%2525"),
        (" ", "%20"),
        ("\t", "%09"),
        ("\n", "%0A"),
        ("日本語", "日本語"),
        ("café", "café"),
        ("tests/onboarding.spec.js", "tests/onboarding%2Espec%2Ejs"),
    ],
)
def test_readable_encoding(value: str, token: str) -> None:
    assert encode_token(value) == token
    assert decode_token(token) == value


def test_empty_value_is_the_lone_percent_token() -> None:
    assert encode_token("") == EMPTY_TOKEN == "%"
    assert decode_token("%") == ""
    # no non-empty value encodes to the empty-value token
    assert encode_token("%") != EMPTY_TOKEN


def test_safe_characters_stay_as_they_are() -> None:
    safe = "abcXYZ019-_+=@:,/~"
    assert encode_token(safe) == safe


def test_truncated_escape_is_rejected() -> None:
    with pytest.raises(ValueError, match="truncated"):
        decode_token("abc%2")


def test_subject_builders_use_encoded_tokens() -> None:
    s = Subjects("qgjob")
    assert s.all == "qgjob.>"
    assert s.job("v1.2.3", "emulator", "acme", "job_1") == "qgjob.job.v1%2E2%2E3.emulator.acme.job_1"
    assert s.jobs("v1.2.3", "emulator") == "qgjob.job.v1%2E2%2E3.emulator.*.*"
    assert s.jobs() == "qgjob.job.*.*.*.*"
    assert s.batch("build 42/rc", "device", "bat_1") == "qgjob.batch.build%2042/rc.device.bat_1"
    assert s.batches() == "qgjob.batch.*.*.*"
    assert s.batches("device") == "qgjob.batch.*.device.*"
    assert s.agent("browserstack", "agent 1") == "qgjob.agent.browserstack.agent%201"
    assert s.claims("acme", "v1.2.3", "device") == "qgjob.claim.acme.v1%2E2%2E3.device"
    assert s.idempotency("acme", "k1") == "qgjob.idem.acme.k1"
    assert s.token("tok_1") == "qgjob.token.tok_1"


def test_jobs_filter_encodes_a_literal_star_value_differently_from_the_wildcard() -> None:
    # "*" as a filter argument means "any"; a value that really is "*" is only
    # reachable through job(), where it is encoded.
    s = Subjects()
    assert s.job("*", ">", "acme", "j").split(".")[2:4] == ["%2A", "%3E"]


@pytest.mark.parametrize(
    "subject",
    [
        "qgjob.job.a.b.c",  # too few tokens
        "qgjob.job.a.b.c.d.e",  # too many
        "other.job.a.b.c.d",  # wrong prefix
        "qgjob.batch.a.b.c.d",  # wrong kind
    ],
)
def test_parse_job_rejects_other_subjects(subject: str) -> None:
    with pytest.raises(ValueError):
        Subjects().parse_job(subject)
