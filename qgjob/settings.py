"""One frozen settings object, loaded once from flags, ``QGJOB_*`` environment
variables and the credentials file that ``qgjob up`` writes."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import msgspec

CREDENTIALS_FILE = "credentials.json"
DEFAULT_DATA_DIR = ".qgjob"
TARGETS = ("emulator", "device", "browserstack")


class Credentials(msgspec.Struct, kw_only=True):
    """What ``qgjob up`` writes into ``<data-dir>/credentials.json``."""

    url: str
    token: str
    admin_token: str
    nats_url: str
    database_url: str
    stream: str = "QGJOB"
    prefix: str = "qgjob"
    schema: str = "qgjob"
    pid: int | None = None
    org_tokens: dict[str, str] = {}


def data_dir(explicit: str | Path | None = None) -> Path:
    """``--data-dir``, else ``QGJOB_DATA_DIR``, else ``.qgjob`` here."""
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("QGJOB_DATA_DIR") or DEFAULT_DATA_DIR)


def read_credentials(folder: Path) -> Credentials | None:
    path = folder / CREDENTIALS_FILE
    try:
        return msgspec.json.decode(path.read_bytes(), type=Credentials)
    except FileNotFoundError:
        return None
    except (OSError, msgspec.DecodeError):
        return None


def write_credentials(folder: Path, creds: Credentials) -> Path:
    path = folder / CREDENTIALS_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(msgspec.json.format(msgspec.json.encode(creds)))
    tmp.chmod(0o600)
    tmp.replace(path)
    return path


class SettingError(ValueError):
    """A setting from the environment is not valid."""


@dataclass(frozen=True)
class Settings:
    url: str = "http://127.0.0.1:8765"
    token: str | None = None
    nats_url: str = "nats://127.0.0.1:4222"
    database_url: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    stream: str = "QGJOB"
    prefix: str = "qgjob"
    schema: str = "qgjob"
    max_jobs_per_request: int = 10_000
    max_body_bytes: int = 1024 * 1024
    org_queue_quota: int = 100_000  # QGJOB_ORG_QUEUE_QUOTA: unfinished jobs an org may hold
    atomic_batch_max: int = 20_000
    stream_replicas: int = 1  # QGJOB_STREAM_REPLICAS: 3 on a three-node NATS cluster
    sources: dict[str, str] = field(default_factory=dict, compare=False)

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)


def load(
    *,
    url: str | None = None,
    token: str | None = None,
    nats_url: str | None = None,
    database_url: str | None = None,
    data_dir_: str | Path | None = None,
) -> Settings:
    """Flags first, then environment, then the credentials file, then defaults."""
    env = os.environ
    creds = read_credentials(data_dir(data_dir_))
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name, flag, env_name in (
        ("url", url, "QGJOB_URL"),
        ("token", token, "QGJOB_TOKEN"),
        ("nats_url", nats_url, "QGJOB_NATS_URL"),
        ("database_url", database_url, "QGJOB_DATABASE_URL"),
    ):
        if flag:
            values[name], sources[name] = flag, "flag"
        elif env.get(env_name):
            values[name], sources[name] = env[env_name], f"${env_name}"
        elif creds is not None:
            values[name], sources[name] = getattr(creds, name), "credentials file"
    for name, env_name in (("stream", "QGJOB_STREAM"), ("prefix", "QGJOB_PREFIX"), ("schema", "QGJOB_SCHEMA")):
        if env.get(env_name):
            values[name] = env[env_name]
        elif creds is not None:
            values[name] = getattr(creds, name)
    replicas = env.get("QGJOB_STREAM_REPLICAS")
    if replicas:
        if not replicas.isdigit() or not 1 <= int(replicas) <= 5:
            raise SettingError(f"QGJOB_STREAM_REPLICAS: {replicas!r} is not allowed; allowed: an integer from 1 to 5")
        values["stream_replicas"] = int(replicas)
    quota = env.get("QGJOB_ORG_QUEUE_QUOTA")
    if quota:
        if not quota.isdigit() or int(quota) < 1:
            raise SettingError(
                f"QGJOB_ORG_QUEUE_QUOTA: {quota!r} is not allowed; allowed: a whole number of jobs, at least 1"
            )
        values["org_queue_quota"] = int(quota)
    return Settings(**values, sources=sources)
