-- Named queries. Each starts with a "-- name: <name>" line.

-- name: checkpoint_get
SELECT seq FROM checkpoints WHERE projection = $1;

-- name: checkpoint_set
INSERT INTO checkpoints (projection, seq) VALUES ($1, $2)
ON CONFLICT (projection) DO UPDATE SET seq = EXCLUDED.seq;

-- The projection statements below each take one array per argument, an
-- element per row: the projector runs a statement once for all the rows of a
-- wave, and no two of them touch the same row.

-- name: job_submitted
INSERT INTO jobs (job_id, org_id, app_version_id, test, target, priority, max_retries, run_id,
                  labels, timeout_s, dedup_key, status, submitted_at, subject_seq, last_seq)
SELECT job_id, org_id, app_version_id, test, target, priority, max_retries, run_id,
       labels::jsonb, timeout_s, dedup_key, 'queued', submitted_at, seq, seq
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::integer[], $7::integer[],
            $8::text[], $9::text[], $10::double precision[], $11::text[], $12::timestamptz[], $13::bigint[])
    AS u(job_id, org_id, app_version_id, test, target, priority, max_retries, run_id,
         labels, timeout_s, dedup_key, submitted_at, seq)
ON CONFLICT (job_id) DO NOTHING;

-- name: job_assigned
UPDATE jobs AS j SET status = 'assigned', agent_id = u.agent_id, batch_id = u.batch_id,
                     subject_seq = u.seq, last_seq = u.seq
FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) AS u(job_id, agent_id, batch_id, seq)
WHERE j.job_id = u.job_id;

-- name: job_started
UPDATE jobs AS j SET status = 'running', attempts = u.attempt, agent_id = u.agent_id, batch_id = u.batch_id,
                     started_at = coalesce(j.started_at, u.at), subject_seq = u.seq, last_seq = u.seq
FROM unnest($1::text[], $2::integer[], $3::text[], $4::text[], $5::timestamptz[], $6::bigint[])
    AS u(job_id, attempt, agent_id, batch_id, at, seq)
WHERE j.job_id = u.job_id;

-- name: job_passed
-- A result also adds its run to its test's durations.
WITH done AS (
    UPDATE jobs AS j SET status = 'passed', flaky = j.failures > 0, duration_ms = u.ms, finished_at = u.at,
                         subject_seq = u.seq, last_seq = u.seq, log_tail = u.log_tail
    FROM unnest($1::text[], $2::bigint[], $3::timestamptz[], $4::bigint[], $5::text[])
        AS u(job_id, ms, at, seq, log_tail)
    WHERE j.job_id = u.job_id
    RETURNING j.org_id, j.test, j.target, u.ms, u.seq
)
SELECT add_runs(array_agg(org_id), array_agg(test), array_agg(target), array_agg(ms), array_agg(seq)) FROM done;

-- name: job_failed
WITH done AS (
    UPDATE jobs AS j SET status = CASE WHEN u.final THEN 'failed' ELSE 'retrying' END,
                         failures = j.failures + 1, duration_ms = u.ms, error = u.error,
                         finished_at = CASE WHEN u.final THEN u.at ELSE NULL END,
                         subject_seq = u.seq, last_seq = u.seq, log_tail = u.log_tail
    FROM unnest($1::text[], $2::boolean[], $3::bigint[], $4::text[], $5::timestamptz[], $6::bigint[], $7::text[])
        AS u(job_id, final, ms, error, at, seq, log_tail)
    WHERE j.job_id = u.job_id
    RETURNING j.org_id, j.test, j.target, u.ms, u.seq
)
SELECT add_runs(array_agg(org_id), array_agg(test), array_agg(target), array_agg(ms), array_agg(seq)) FROM done;

-- name: job_retry_scheduled
UPDATE jobs AS j SET status = 'retrying', agent_id = NULL, batch_id = NULL, subject_seq = u.seq, last_seq = u.seq
FROM unnest($1::text[], $2::bigint[]) AS u(job_id, seq)
WHERE j.job_id = u.job_id;

-- name: job_requeued
UPDATE jobs AS j SET status = 'queued', agent_id = NULL, batch_id = NULL, subject_seq = u.seq, last_seq = u.seq
FROM unnest($1::text[], $2::bigint[]) AS u(job_id, seq)
WHERE j.job_id = u.job_id;

-- name: job_cancelled
UPDATE jobs AS j SET status = 'cancelled', finished_at = u.at, error = coalesce(j.error, u.reason),
                     subject_seq = u.seq, last_seq = u.seq
FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::bigint[]) AS u(job_id, at, reason, seq)
WHERE j.job_id = u.job_id;

-- name: job_errored
UPDATE jobs AS j SET status = 'error', finished_at = u.at, error = u.error, subject_seq = u.seq, last_seq = u.seq
FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::bigint[]) AS u(job_id, at, error, seq)
WHERE j.job_id = u.job_id;

-- name: batch_assigned
INSERT INTO batches (batch_id, agent_id, app_version_id, target, job_count, install, assigned_at, last_seq)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::integer[], $6::boolean[],
                     $7::timestamptz[], $8::bigint[])
ON CONFLICT (batch_id) DO NOTHING;

-- name: agent_batch_assigned
-- An agent that stopped or was lost stays so: the batch goes back to the queue.
UPDATE agents AS a SET state = CASE WHEN a.state IN ('stopped', 'lost') THEN a.state ELSE 'busy' END,
                       current_batch = CASE WHEN a.state IN ('stopped', 'lost') THEN a.current_batch
                                            ELSE u.batch_id END,
                       updated_at = u.at, last_seq = u.seq
FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::bigint[]) AS u(agent_id, batch_id, at, seq)
WHERE a.agent_id = u.agent_id;

-- name: app_installed
UPDATE batches AS b SET installed = true, last_seq = u.seq
FROM unnest($1::text[], $2::bigint[]) AS u(batch_id, seq)
WHERE b.batch_id = u.batch_id;

-- name: agent_app_installed
UPDATE agents AS a SET installed_app = u.app_version_id, updated_at = u.at, last_seq = u.seq
FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::bigint[]) AS u(agent_id, app_version_id, at, seq)
WHERE a.agent_id = u.agent_id;

-- name: batch_finished
UPDATE batches AS b SET finished_at = u.at, last_seq = u.seq
FROM unnest($1::text[], $2::timestamptz[], $3::bigint[]) AS u(batch_id, at, seq)
WHERE b.batch_id = u.batch_id;

-- name: agent_batch_finished
UPDATE agents AS a SET state = CASE WHEN a.state = 'busy' THEN 'idle' ELSE a.state END,
                       current_batch = NULL, updated_at = u.at, last_seq = u.seq
FROM unnest($1::text[], $2::timestamptz[], $3::bigint[], $4::text[]) AS u(agent_id, at, seq, batch_id)
WHERE a.agent_id = u.agent_id AND a.current_batch = u.batch_id;

-- name: agent_registered
INSERT INTO agents (agent_id, target, slots, name, runner, state, registered_at, updated_at, last_seq)
SELECT agent_id, target, slots, name, runner, 'idle', at, at, seq
FROM unnest($1::text[], $2::text[], $3::integer[], $4::text[], $5::text[], $6::timestamptz[], $7::bigint[])
    AS u(agent_id, target, slots, name, runner, at, seq)
ON CONFLICT (agent_id) DO UPDATE SET target = EXCLUDED.target, slots = EXCLUDED.slots,
    name = EXCLUDED.name, runner = EXCLUDED.runner, state = 'idle', current_batch = NULL,
    updated_at = EXCLUDED.updated_at, last_seq = EXCLUDED.last_seq;

-- name: agent_state
UPDATE agents AS a SET state = u.state, current_batch = NULL, updated_at = u.at, last_seq = u.seq
FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::bigint[]) AS u(agent_id, state, at, seq)
WHERE a.agent_id = u.agent_id;

-- name: keys_claimed
INSERT INTO claim_groups (org_id, app_version_id, target, seq, last_seq)
SELECT org_id, app_version_id, target, seq, seq
FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) AS u(org_id, app_version_id, target, seq)
ON CONFLICT (org_id, app_version_id, target) DO UPDATE SET seq = EXCLUDED.seq, last_seq = EXCLUDED.last_seq;

-- name: token_created
INSERT INTO tokens (token_id, org_id, admin, sha256, created_at, last_seq)
SELECT * FROM unnest($1::text[], $2::text[], $3::boolean[], $4::text[], $5::timestamptz[], $6::bigint[])
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
-- From the per-group counts, so the cost grows with the org's groups, not its jobs.
SELECT coalesce(sum(n), 0) FROM job_counts WHERE org_id = $1 AND status IN ('queued', 'assigned', 'running', 'retrying');

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
