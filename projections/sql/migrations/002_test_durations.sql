-- How long each test takes on each target, from every attempt that ran:
-- the scheduler's duration estimates, kept for dashboards and audits.
CREATE TABLE test_durations (
    org_id      text NOT NULL,
    test        text NOT NULL,
    target      text NOT NULL,
    runs        integer NOT NULL,
    mean_ms     double precision NOT NULL,
    last_ms     bigint NOT NULL,
    last_seq    bigint NOT NULL,
    PRIMARY KEY (org_id, test, target)
);
