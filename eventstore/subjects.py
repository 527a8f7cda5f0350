"""Subject naming and the reversible, readable encoding of values into tokens.

A NATS subject token may not be empty and may not contain ``.``, ``*``, ``>``
or white space. Values such as ``v1.2.3`` or ``build 42/rc`` are encoded
URL-style: every character outside a safe set becomes ``%XX`` for each byte of
its UTF-8 form, so ``v1.2.3`` reads as ``v1%2E2%2E3``. Printable non-ASCII
characters stay as they are (NATS subjects are UTF-8). The empty string is the
lone token ``%``, which no other value encodes to.

Subject map (``<p>`` is the prefix, ``qgjob`` by default):

- ``<p>.job.<app_version>.<target>.<org>.<job_id>``: one job's lifecycle
- ``<p>.batch.<app_version>.<target>.<batch_id>``: batch assignment and install
- ``<p>.agent.<target>.<agent_id>``: agent registration and departure
- ``<p>.claim.<org>.<app_version>.<target>``: dedup keys claimed by new jobs
- ``<p>.idem.<org>.<key>``: the answer given to a submit with an Idempotency-Key
- ``<p>.token.<token_id>``: API tokens (hashes only)

Agents heartbeat on ``_hb.<p>.<agent_id>`` with plain NATS: heartbeats are
not events and are not stored.
"""

from __future__ import annotations

import re
import string
from functools import lru_cache

_SAFE = frozenset(string.ascii_letters + string.digits + "-_+=@:,/~")
_PLAIN = re.compile(r"[A-Za-z0-9\-_+=@:,/~]+")  # a value of safe characters only is its own token
EMPTY_TOKEN = "%"
_FIELDS = {
    ("job", 4): ("app_version_id", "target", "org_id", "job_id"),
    ("batch", 3): ("app_version_id", "target", "batch_id"),
    ("agent", 2): ("target", "agent_id"),
}


def _keeps(ch: str) -> bool:
    if ch in _SAFE:
        return True
    return ord(ch) > 127 and ch.isprintable() and not ch.isspace()


def encode_token(value: str) -> str:
    """Encode ``value`` as one subject token; :func:`decode_token` reverses it."""
    if _PLAIN.fullmatch(value):
        return value
    return _escaped(value)


@lru_cache(maxsize=4096)  # builds and targets with dots recur in every subject of their jobs
def _escaped(value: str) -> str:
    if value == "":
        return EMPTY_TOKEN
    out: list[str] = []
    for ch in value:
        if _keeps(ch):
            out.append(ch)
        else:
            out.extend(f"%{byte:02X}" for byte in ch.encode("utf-8", "surrogatepass"))
    return "".join(out)


def decode_token(token: str) -> str:
    """The value a token was encoded from."""
    if token == EMPTY_TOKEN:
        return ""
    raw = bytearray()
    i = 0
    while i < len(token):
        ch = token[i]
        if ch == "%":
            if i + 3 > len(token):
                raise ValueError(f"truncated escape in subject token {token!r}")
            raw.append(int(token[i + 1 : i + 3], 16))
            i += 3
        else:
            raw.extend(ch.encode("utf-8"))
            i += 1
    return raw.decode("utf-8", "surrogatepass")


class Subjects:
    """Builds and parses the subjects of one stream prefix."""

    def __init__(self, prefix: str = "qgjob") -> None:
        self.prefix = prefix

    @property
    def all(self) -> str:
        return f"{self.prefix}.>"

    def job(self, app_version_id: str, target: str, org_id: str, job_id: str) -> str:
        return ".".join(
            (
                self.prefix,
                "job",
                encode_token(app_version_id),
                encode_token(target),
                encode_token(org_id),
                encode_token(job_id),
            )
        )

    def jobs(self, app_version_id: str = "*", target: str = "*", org_id: str = "*") -> str:
        """A filter over job subjects; ``*`` leaves a token unfiltered."""
        parts = [app_version_id, target, org_id]
        tokens = ["*" if p == "*" else encode_token(p) for p in parts]
        return ".".join((self.prefix, "job", *tokens, "*"))

    def batch(self, app_version_id: str, target: str, batch_id: str) -> str:
        return ".".join(
            (self.prefix, "batch", encode_token(app_version_id), encode_token(target), encode_token(batch_id))
        )

    def batches(self, target: str = "*", app_version_id: str = "*") -> str:
        """A filter over batch subjects; ``*`` leaves a token unfiltered."""
        tokens = ["*" if p == "*" else encode_token(p) for p in (app_version_id, target)]
        return ".".join((self.prefix, "batch", *tokens, "*"))

    def agent(self, target: str, agent_id: str) -> str:
        return ".".join((self.prefix, "agent", encode_token(target), encode_token(agent_id)))

    def agents(self, target: str = "*") -> str:
        """A filter over agent subjects; ``*`` leaves the target unfiltered."""
        return ".".join((self.prefix, "agent", "*" if target == "*" else encode_token(target), "*"))

    def claims(self, org_id: str, app_version_id: str, target: str) -> str:
        return ".".join(
            (self.prefix, "claim", encode_token(org_id), encode_token(app_version_id), encode_token(target))
        )

    def idempotency(self, org_id: str, key: str) -> str:
        return ".".join((self.prefix, "idem", encode_token(org_id), encode_token(key)))

    def heartbeat(self, agent_id: str) -> str:
        """Where an agent's heartbeats go: plain NATS, outside the stream."""
        return f"_hb.{self.prefix}.{encode_token(agent_id)}"

    @property
    def heartbeats(self) -> str:
        return f"_hb.{self.prefix}.*"

    def cancel_notice(self, agent_id: str) -> str:
        """Where the agent holding a job hears that it was cancelled: plain NATS, outside the stream."""
        return f"_cx.{self.prefix}.{encode_token(agent_id)}"

    def token(self, token_id: str) -> str:
        return ".".join((self.prefix, "token", encode_token(token_id)))

    def ids(self, subject: str) -> dict[str, str]:
        """The values a job, batch or agent subject carries, by field name (``{}`` for others)."""
        parts = subject.split(".")
        if len(parts) < 3 or parts[0] != self.prefix:
            return {}
        names = _FIELDS.get((parts[1], len(parts) - 2))
        if names is None:
            return {}
        return {name: decode_token(token) for name, token in zip(names, parts[2:], strict=True)}

    def parse_job(self, subject: str) -> tuple[str, str, str, str]:
        """``(app_version_id, target, org_id, job_id)`` of a job subject."""
        parts = subject.split(".")
        if len(parts) != 6 or parts[0] != self.prefix or parts[1] != "job":
            raise ValueError(f"not a job subject: {subject!r}")
        app, target, org, job = (decode_token(p) for p in parts[2:])
        return app, target, org, job
