-- Counts of jobs per (org, build, target, status), kept by a trigger, so that
-- a metrics scrape reads one row per group instead of every job.

CREATE TABLE job_counts (
    org_id          text NOT NULL,
    app_version_id  text NOT NULL,
    target          text NOT NULL,
    status          text NOT NULL,
    n               bigint NOT NULL DEFAULT 0,
    retries         bigint NOT NULL DEFAULT 0,  -- attempts after the first
    flaky           bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (org_id, app_version_id, target, status)
);

CREATE FUNCTION count_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.status = NEW.status AND OLD.attempts = NEW.attempts
       AND OLD.flaky = NEW.flaky THEN
        RETURN NULL;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        UPDATE job_counts
        SET n = n - 1, retries = retries - greatest(OLD.attempts - 1, 0), flaky = flaky - OLD.flaky::int
        WHERE org_id = OLD.org_id AND app_version_id = OLD.app_version_id
          AND target = OLD.target AND status = OLD.status;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO job_counts AS c (org_id, app_version_id, target, status, n, retries, flaky)
        VALUES (NEW.org_id, NEW.app_version_id, NEW.target, NEW.status, 1,
                greatest(NEW.attempts - 1, 0), NEW.flaky::int)
        ON CONFLICT (org_id, app_version_id, target, status) DO UPDATE
        SET n = c.n + 1, retries = c.retries + EXCLUDED.retries, flaky = c.flaky + EXCLUDED.flaky;
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER jobs_counted AFTER INSERT OR UPDATE OR DELETE ON jobs
    FOR EACH ROW EXECUTE FUNCTION count_jobs();

INSERT INTO job_counts (org_id, app_version_id, target, status, n, retries, flaky)
SELECT org_id, app_version_id, target, status, count(*),
       sum(greatest(attempts - 1, 0)), count(*) FILTER (WHERE flaky)
FROM jobs GROUP BY org_id, app_version_id, target, status;

-- The waiting jobs of a group in priority and age order: a queue's best
-- priority and oldest job are one index probe each.
CREATE INDEX jobs_waiting_priority ON jobs (app_version_id, target, priority)
    WHERE status IN ('queued', 'retrying');
CREATE INDEX jobs_waiting_age ON jobs (app_version_id, target, submitted_at)
    WHERE status IN ('queued', 'retrying');
