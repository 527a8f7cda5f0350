-- /v1/stream reads jobs by the sequence of their last change (a run's jobs
-- come from jobs_run and are sorted in memory).
CREATE INDEX jobs_last_seq ON jobs (last_seq);
