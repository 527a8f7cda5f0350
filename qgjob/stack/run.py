"""``qgjob up``: run the embedded stack until Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from qgjob.services import run as run_services
from qgjob.services import run_until_signalled
from qgjob.settings import CREDENTIALS_FILE
from qgjob.stack.embedded import EmbeddedStack, StackOptions


def up(
    data_dir: Path,
    *,
    port: int = 8765,
    agents: int = 1,
    test_seconds: float = 0.5,
    install_seconds: float = 2.0,
    simulate_file: Path | None = None,
    orgs: tuple[str, ...] = (),
    lease_s: float = 15.0,
    retry_backoff_s: float = 1.0,
    install_value_s: float = 0.0,
) -> int:
    stack = EmbeddedStack(
        data_dir,
        StackOptions(
            api_port=port,
            agents_per_target=agents,
            test_seconds=test_seconds,
            install_seconds=install_seconds,
            simulate_file=simulate_file,
            orgs=orgs,
            lease_s=lease_s,
            retry_backoff_s=retry_backoff_s,
            install_value_s=install_value_s,
        ),
    )
    stack.lock()
    try:
        nats_url, dsn, api_port = stack.start_servers(
            nats_url=os.environ.get("QGJOB_NATS_URL") or None,
            database_url=os.environ.get("QGJOB_DATABASE_URL") or None,
        )
        try:
            creds = asyncio.run(stack.bootstrap(nats_url, dsn, api_port))
            services = stack.services()
            api = services[2]

            async def announce() -> None:
                while not api.started:
                    await asyncio.sleep(0.02)
                print(f"qgjob is up: {creds.url}", flush=True)
                print(f"  token (admin): {creds.token}")
                for org_id, org_token in creds.org_tokens.items():
                    print(f"  token ({org_id}): {org_token}")
                print(f"  NATS:          {creds.nats_url}")
                print(f"  Postgres:      {creds.database_url}")
                print(f"  credentials:   {stack.data_dir / CREDENTIALS_FILE}")
                print(f"  agents:        {agents} simulated per target")
                print("Press Ctrl-C to stop.", flush=True)

            run_services(run_until_signalled(services, on_ready=announce))
            print("qgjob stopped; data kept in", stack.data_dir, flush=True)
        finally:
            stack.stop_servers()
    finally:
        stack.unlock()
    sys.stdout.flush()
    return 0
