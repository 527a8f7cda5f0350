"""Bearer tokens: each belongs to one org, or is an admin token."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

import asyncpg

from eventstore import EventStore
from eventstore.events import TokenCreated
from eventstore.ids import new_id
from projections.schema import queries

Q = queries()


@dataclass(frozen=True, slots=True)
class Principal:
    token_id: str
    org_id: str | None
    admin: bool

    def scope(self) -> str | None:
        """The org every query is limited to; ``None`` for admins."""
        return None if self.admin else self.org_id


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(org_id: str | None) -> str:
    kind = "adm" if org_id is None else "org"
    return f"qgj_{kind}_{secrets.token_urlsafe(24)}"


async def create_token(store: EventStore, *, org_id: str | None, admin: bool) -> tuple[str, int]:
    """Record a new token's hash; returns the token (shown once) and the event's sequence."""
    token = new_token(None if admin else org_id)
    token_id = new_id("tok")
    seq = await store.append(
        store.subjects.token(token_id),
        TokenCreated(token_id=token_id, org_id=org_id, admin=admin, sha256=hash_token(token)),
        expected=0,
    )
    return token, seq


async def lookup(pool: asyncpg.Pool, token: str) -> Principal | None:
    row = await pool.fetchrow(Q["token_by_hash"], hash_token(token))
    if row is None:
        return None
    return Principal(token_id=row["token_id"], org_id=row["org_id"], admin=row["admin"])
