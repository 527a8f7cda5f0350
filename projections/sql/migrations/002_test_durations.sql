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

-- One more run of a test took ms milliseconds: a running mean per test and target.
CREATE FUNCTION record_duration(p_org text, p_test text, p_target text, p_ms bigint, p_seq bigint)
RETURNS void LANGUAGE sql AS $$
    INSERT INTO test_durations (org_id, test, target, runs, mean_ms, last_ms, last_seq)
    VALUES (p_org, p_test, p_target, 1, p_ms, p_ms, p_seq)
    ON CONFLICT (org_id, test, target) DO UPDATE SET
        runs = test_durations.runs + 1,
        mean_ms = test_durations.mean_ms + (EXCLUDED.last_ms - test_durations.mean_ms) / (test_durations.runs + 1),
        last_ms = EXCLUDED.last_ms,
        last_seq = EXCLUDED.last_seq;
$$;
