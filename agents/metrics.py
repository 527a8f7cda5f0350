"""What an agent does: test runs and installs."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

RUN_DURATION = Histogram(
    "qgjob_job_run_seconds",
    "Duration of one attempt of one test on an agent, by outcome (passed, failed)",
    ["target", "outcome"],
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600),
)
INSTALLS = Counter("qgjob_agent_installs", "Builds installed by agents of this process", ["target"])
INSTALL_SECONDS = Histogram(
    "qgjob_agent_install_seconds",
    "Time an install of a build took",
    ["target"],
    buckets=(0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600),
)
