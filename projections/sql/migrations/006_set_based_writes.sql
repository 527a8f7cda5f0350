-- The projector writes each statement once for many rows (UPDATE ... FROM
-- unnest): job counts follow each statement's changed rows at once, and a
-- test's mean duration is its total over its runs, the same in any order.

DROP TRIGGER jobs_counted ON jobs;
DROP FUNCTION count_jobs();

-- A trigger with transition tables handles one operation, so inserts, updates
-- and deletes each have their own.

-- The count change of one statement's rows: minus each old row, plus each new
-- one, summed per (org, build, target, status); rows whose status, attempts
-- and flakiness stayed put cancel out.
CREATE FUNCTION count_jobs_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_counts AS c (org_id, app_version_id, target, status, n, retries, flaky)
    SELECT org_id, app_version_id, target, status, sum(n), sum(retries), sum(flaky)
    FROM (
        SELECT org_id, app_version_id, target, status,
               -1 AS n, -greatest(attempts - 1, 0) AS retries, -flaky::int AS flaky
        FROM old_rows
        UNION ALL
        SELECT org_id, app_version_id, target, status, 1, greatest(attempts - 1, 0), flaky::int
        FROM new_rows
    ) AS change
    GROUP BY org_id, app_version_id, target, status
    HAVING sum(n) <> 0 OR sum(retries) <> 0 OR sum(flaky) <> 0
    ON CONFLICT (org_id, app_version_id, target, status) DO UPDATE
    SET n = c.n + EXCLUDED.n, retries = c.retries + EXCLUDED.retries, flaky = c.flaky + EXCLUDED.flaky;
    RETURN NULL;
END;
$$;

CREATE FUNCTION count_jobs_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_counts AS c (org_id, app_version_id, target, status, n, retries, flaky)
    SELECT org_id, app_version_id, target, status, count(*), sum(greatest(attempts - 1, 0)),
           count(*) FILTER (WHERE flaky)
    FROM new_rows
    GROUP BY org_id, app_version_id, target, status
    ON CONFLICT (org_id, app_version_id, target, status) DO UPDATE
    SET n = c.n + EXCLUDED.n, retries = c.retries + EXCLUDED.retries, flaky = c.flaky + EXCLUDED.flaky;
    RETURN NULL;
END;
$$;

CREATE FUNCTION count_jobs_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE job_counts AS c
    SET n = c.n - d.n, retries = c.retries - d.retries, flaky = c.flaky - d.flaky
    FROM (
        SELECT org_id, app_version_id, target, status, count(*) AS n,
               sum(greatest(attempts - 1, 0)) AS retries, count(*) FILTER (WHERE flaky) AS flaky
        FROM old_rows
        GROUP BY org_id, app_version_id, target, status
    ) AS d
    WHERE c.org_id = d.org_id AND c.app_version_id = d.app_version_id
      AND c.target = d.target AND c.status = d.status;
    RETURN NULL;
END;
$$;

CREATE TRIGGER jobs_counted_insert AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION count_jobs_inserted();
CREATE TRIGGER jobs_counted_update AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION count_jobs_updated();
CREATE TRIGGER jobs_counted_delete AFTER DELETE ON jobs
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION count_jobs_deleted();

-- Durations: the total of every run, so that many runs added at once give the
-- same mean as one at a time; the last run is the one latest in the stream.
ALTER TABLE test_durations ADD COLUMN total_ms bigint;
UPDATE test_durations SET total_ms = round(mean_ms * runs);
ALTER TABLE test_durations ALTER COLUMN total_ms SET NOT NULL;
UPDATE test_durations SET mean_ms = total_ms::double precision / runs;
DROP FUNCTION record_duration(text, text, text, bigint, bigint);

-- Runs of tests, an element of each array per run, added to their tests'
-- totals at once (the results of a wave call it once).
CREATE FUNCTION add_runs(p_org text[], p_test text[], p_target text[], p_ms bigint[], p_seq bigint[])
RETURNS void LANGUAGE sql AS $$
    INSERT INTO test_durations AS d (org_id, test, target, runs, total_ms, mean_ms, last_ms, last_seq)
    SELECT org_id, test, target, count(*), sum(ms), sum(ms)::double precision / count(*),
           (array_agg(ms ORDER BY seq DESC))[1], max(seq)
    FROM unnest(p_org, p_test, p_target, p_ms, p_seq) AS r(org_id, test, target, ms, seq)
    GROUP BY org_id, test, target
    ON CONFLICT (org_id, test, target) DO UPDATE SET
        runs = d.runs + EXCLUDED.runs,
        total_ms = d.total_ms + EXCLUDED.total_ms,
        mean_ms = (d.total_ms + EXCLUDED.total_ms)::double precision / (d.runs + EXCLUDED.runs),
        last_ms = CASE WHEN EXCLUDED.last_seq > d.last_seq THEN EXCLUDED.last_ms ELSE d.last_ms END,
        last_seq = greatest(d.last_seq, EXCLUDED.last_seq);
$$;
