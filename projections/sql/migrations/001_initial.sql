-- Read models of the event stream. Every row records last_seq, the stream
-- sequence of the last event that touched it; replay compares rows by it.

CREATE TABLE jobs (
    job_id          text PRIMARY KEY,
    org_id          text NOT NULL,
    app_version_id  text NOT NULL,
    test            text NOT NULL,
    target          text NOT NULL,
    priority        integer NOT NULL,
    max_retries     integer NOT NULL,
    run_id          text NOT NULL,
    labels          jsonb NOT NULL DEFAULT '{}'::jsonb,
    timeout_s       double precision,
    dedup_key       text NOT NULL,
    status          text NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    failures        integer NOT NULL DEFAULT 0,
    flaky           boolean NOT NULL DEFAULT false,
    agent_id        text,
    batch_id        text,
    submitted_at    timestamptz NOT NULL,
    started_at      timestamptz,
    finished_at     timestamptz,
    duration_ms     bigint,
    error           text,
    log_tail        text,
    subject_seq     bigint NOT NULL,
    last_seq        bigint NOT NULL
);
CREATE INDEX jobs_org_job ON jobs (org_id, job_id);
CREATE INDEX jobs_org_status ON jobs (org_id, status, job_id);
CREATE INDEX jobs_run ON jobs (run_id, job_id);
CREATE INDEX jobs_status ON jobs (status);

-- Jobs that hold their dedup key: every job not yet finished.
CREATE INDEX jobs_active_key ON jobs (dedup_key)
    WHERE status NOT IN ('passed', 'failed', 'cancelled', 'error');

-- The last KeysClaimed sequence per (org, app version, target): the fence
-- a submission appends against.
CREATE TABLE claim_groups (
    org_id          text NOT NULL,
    app_version_id  text NOT NULL,
    target          text NOT NULL,
    seq             bigint NOT NULL,
    last_seq        bigint NOT NULL,
    PRIMARY KEY (org_id, app_version_id, target)
);

CREATE TABLE agents (
    agent_id        text PRIMARY KEY,
    target          text NOT NULL,
    slots           integer NOT NULL,
    name            text NOT NULL,
    runner          text NOT NULL,
    state           text NOT NULL,
    installed_app   text,
    current_batch   text,
    registered_at   timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    last_seq        bigint NOT NULL
);

CREATE TABLE batches (
    batch_id        text PRIMARY KEY,
    agent_id        text NOT NULL,
    app_version_id  text NOT NULL,
    target          text NOT NULL,
    job_count       integer NOT NULL,
    install         boolean NOT NULL,
    installed       boolean NOT NULL DEFAULT false,
    assigned_at     timestamptz NOT NULL,
    finished_at     timestamptz,
    last_seq        bigint NOT NULL
);

CREATE TABLE tokens (
    token_id    text PRIMARY KEY,
    org_id      text,
    admin       boolean NOT NULL,
    sha256      text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL,
    last_seq    bigint NOT NULL
);

CREATE TABLE checkpoints (
    projection  text PRIMARY KEY,
    seq         bigint NOT NULL
);
