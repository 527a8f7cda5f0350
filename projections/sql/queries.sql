-- Named queries. Each starts with a "-- name: <name>" line.

-- name: checkpoint_get
SELECT seq FROM checkpoints WHERE projection = $1;

-- name: checkpoint_set
INSERT INTO checkpoints (projection, seq) VALUES ($1, $2)
ON CONFLICT (projection) DO UPDATE SET seq = EXCLUDED.seq;

-- name: job_submitted
INSERT INTO jobs (job_id, org_id, app_version_id, test, target, priority, max_retries, run_id,
                  labels, timeout_s, dedup_key, status, submitted_at, subject_seq, last_seq)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10, $11, 'queued', $12, $13, $13)
ON CONFLICT (job_id) DO NOTHING;

-- name: job_assigned
UPDATE jobs SET status = 'assigned', agent_id = $2, batch_id = $3, subject_seq = $4, last_seq = $4
WHERE job_id = $1;

-- name: job_started
UPDATE jobs SET status = 'running', attempts = $2, agent_id = $3, batch_id = $4,
                started_at = coalesce(started_at, $5), subject_seq = $6, last_seq = $6
WHERE job_id = $1;

-- name: job_passed
WITH done AS (
    UPDATE jobs SET status = 'passed', flaky = failures > 0, duration_ms = $2, finished_at = $3,
                    subject_seq = $4, last_seq = $4, log_tail = $5
    WHERE job_id = $1
    RETURNING org_id, test, target
)
SELECT record_duration(org_id, test, target, $2::bigint, $4) FROM done;

-- name: job_failed
WITH done AS (
    UPDATE jobs SET status = CASE WHEN $2::boolean THEN 'failed' ELSE 'retrying' END,
                    failures = failures + 1, duration_ms = $3, error = $4,
                    finished_at = CASE WHEN $2::boolean THEN $5::timestamptz ELSE NULL END,
                    subject_seq = $6, last_seq = $6, log_tail = $7
    WHERE job_id = $1
    RETURNING org_id, test, target
)
SELECT record_duration(org_id, test, target, $3::bigint, $6) FROM done;

-- name: job_retry_scheduled
UPDATE jobs SET status = 'retrying', agent_id = NULL, batch_id = NULL, subject_seq = $2, last_seq = $2
WHERE job_id = $1;

-- name: job_requeued
UPDATE jobs SET status = 'queued', agent_id = NULL, batch_id = NULL, subject_seq = $2, last_seq = $2
WHERE job_id = $1;

-- name: job_cancelled
UPDATE jobs SET status = 'cancelled', finished_at = $2, error = coalesce(error, $3),
                subject_seq = $4, last_seq = $4
WHERE job_id = $1;

-- name: job_errored
UPDATE jobs SET status = 'error', finished_at = $2, error = $3, subject_seq = $4, last_seq = $4
WHERE job_id = $1;

-- name: batch_assigned
INSERT INTO batches (batch_id, agent_id, app_version_id, target, job_count, install, assigned_at, last_seq)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (batch_id) DO NOTHING;

-- name: agent_batch_assigned
-- An agent that stopped or was lost stays so: the batch goes back to the queue.
UPDATE agents SET state = CASE WHEN state IN ('stopped', 'lost') THEN state ELSE 'busy' END,
                  current_batch = CASE WHEN state IN ('stopped', 'lost') THEN current_batch ELSE $2 END,
                  updated_at = $3, last_seq = $4
WHERE agent_id = $1;

-- name: app_installed
UPDATE batches SET installed = true, last_seq = $2 WHERE batch_id = $1;

-- name: agent_app_installed
UPDATE agents SET installed_app = $2, updated_at = $3, last_seq = $4 WHERE agent_id = $1;

-- name: batch_finished
UPDATE batches SET finished_at = $2, last_seq = $3 WHERE batch_id = $1;

-- name: agent_batch_finished
UPDATE agents SET state = CASE WHEN state = 'busy' THEN 'idle' ELSE state END,
                  current_batch = NULL, updated_at = $2, last_seq = $3
WHERE agent_id = $1 AND current_batch = $4;

-- name: agent_registered
INSERT INTO agents (agent_id, target, slots, name, runner, state, registered_at, updated_at, last_seq)
VALUES ($1, $2, $3, $4, $5, 'idle', $6, $6, $7)
ON CONFLICT (agent_id) DO UPDATE SET target = EXCLUDED.target, slots = EXCLUDED.slots,
    name = EXCLUDED.name, runner = EXCLUDED.runner, state = 'idle', current_batch = NULL,
    updated_at = EXCLUDED.updated_at, last_seq = EXCLUDED.last_seq;

-- name: agent_state
UPDATE agents SET state = $2, current_batch = NULL, updated_at = $3, last_seq = $4 WHERE agent_id = $1;

-- name: keys_claimed
INSERT INTO claim_groups (org_id, app_version_id, target, seq, last_seq) VALUES ($1, $2, $3, $4, $4)
ON CONFLICT (org_id, app_version_id, target) DO UPDATE SET seq = EXCLUDED.seq, last_seq = EXCLUDED.last_seq;

-- name: token_created
INSERT INTO tokens (token_id, org_id, admin, sha256, created_at, last_seq) VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (token_id) DO NOTHING;

-- name: token_by_hash
SELECT token_id, org_id, admin FROM tokens WHERE sha256 = $1;

-- name: job_get
SELECT * FROM jobs WHERE job_id = $1 AND ($2::text IS NULL OR org_id = $2);

-- name: active_keys
SELECT dedup_key, job_id, status, org_id, app_version_id, target FROM jobs
WHERE dedup_key = ANY($1::text[]) AND status NOT IN ('passed', 'failed', 'cancelled', 'error');

-- name: dedup_state
-- One statement, so one snapshot: claim fences and the keys held by unfinished jobs.
SELECT 'fence' AS kind, org_id, app_version_id, target, seq, NULL::text AS dedup_key,
       NULL::text AS job_id, NULL::text AS status
FROM claim_groups
WHERE org_id = ANY($1::text[]) AND app_version_id = ANY($2::text[]) AND target = ANY($3::text[])
UNION ALL
SELECT 'taken', j.org_id, j.app_version_id, j.target, NULL, j.dedup_key, j.job_id, j.status
FROM unnest($4::text[]) AS k(key)
CROSS JOIN LATERAL (
    SELECT * FROM jobs WHERE dedup_key = k.key AND status NOT IN ('passed', 'failed', 'cancelled', 'error')
    LIMIT 1  -- at most one unfinished job holds a key; also keeps this a per-key index probe
) AS j;

-- name: claim_seqs
SELECT org_id, app_version_id, target, seq FROM claim_groups
WHERE org_id = ANY($1::text[]) AND app_version_id = ANY($2::text[]) AND target = ANY($3::text[]);

-- name: run_counts
SELECT status, count(*) AS n, bool_or(flaky) AS any_flaky, sum(CASE WHEN flaky THEN 1 ELSE 0 END) AS flaky
FROM jobs WHERE run_id = $1 AND ($2::text IS NULL OR org_id = $2)
GROUP BY status;

-- name: agents_list
SELECT * FROM agents ORDER BY target, agent_id;

-- name: queue_depth
-- Waiting jobs per group from the counts; best priority and oldest job by one
-- probe each into the partial indexes of waiting jobs.
SELECT g.app_version_id, g.target, g.depth,
    (SELECT j.priority FROM jobs j
     WHERE j.app_version_id = g.app_version_id AND j.target = g.target
       AND j.status IN ('queued', 'retrying') AND ($1::text IS NULL OR j.org_id = $1)
     ORDER BY j.priority LIMIT 1) AS best_priority,
    (SELECT j.submitted_at FROM jobs j
     WHERE j.app_version_id = g.app_version_id AND j.target = g.target
       AND j.status IN ('queued', 'retrying') AND ($1::text IS NULL OR j.org_id = $1)
     ORDER BY j.submitted_at LIMIT 1) AS oldest
FROM (
    SELECT app_version_id, target, sum(n) AS depth FROM job_counts
    WHERE status IN ('queued', 'retrying') AND ($1::text IS NULL OR org_id = $1)
    GROUP BY app_version_id, target HAVING sum(n) > 0
) g
ORDER BY best_priority, oldest;

-- name: checkpoint_lock
SELECT seq FROM checkpoints WHERE projection = $1 FOR UPDATE;

-- name: unfinished_count
SELECT count(*) FROM jobs WHERE org_id = $1 AND status IN ('queued', 'assigned', 'running', 'retrying');

-- name: duration_estimate
-- A test's mean duration on a target; for a test never run, the mean of its
-- suite (the tests in the same folder) on that target.
SELECT coalesce(
    (SELECT mean_ms FROM test_durations WHERE org_id = $1 AND target = $2 AND test = $3),
    (SELECT avg(mean_ms) FROM test_durations
     WHERE org_id = $1 AND target = $2 AND test LIKE regexp_replace($3, '[^/]*$', '') || '%')
) AS estimate_ms;

-- name: stream_changed
-- Jobs changed past a cursor, for /v1/stream: $2 org, $3 run, $4 job ids, $5 status (NULL: any).
SELECT * FROM jobs
WHERE last_seq > $1
  AND ($2::text IS NULL OR org_id = $2)
  AND ($3::text IS NULL OR run_id = $3)
  AND ($4::text[] IS NULL OR job_id = ANY($4::text[]))
  AND ($5::text IS NULL OR status = $5)
ORDER BY last_seq, job_id
LIMIT $6;

-- name: stream_same_seq
-- The rest of a group of jobs sharing one sequence, after the page that cut it.
SELECT * FROM jobs
WHERE last_seq = $1 AND job_id > $2
  AND ($3::text IS NULL OR org_id = $3)
  AND ($4::text IS NULL OR run_id = $4)
  AND ($5::text[] IS NULL OR job_id = ANY($5::text[]))
  AND ($6::text IS NULL OR status = $6)
ORDER BY job_id;

-- name: projection_notify
-- Wakes /v1/stream listeners of this schema once the transaction commits.
SELECT pg_notify('qgjob.' || current_schema(), $1::bigint::text);

-- name: metrics_jobs
-- From the trigger-kept counts: one row per group and status, not per job.
SELECT target, status, sum(n) AS n, sum(retries) AS retries, sum(flaky) AS flaky
FROM job_counts WHERE ($1::text IS NULL OR org_id = $1)
GROUP BY target, status HAVING sum(n) > 0;

-- name: metrics_agents
SELECT target, state, count(*) AS n FROM agents GROUP BY target, state;

-- name: metrics_installs
SELECT count(*) FILTER (WHERE installed) AS installs, coalesce(sum(job_count), 0) AS jobs, count(*) AS batches
FROM batches;
