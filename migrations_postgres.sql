-- steplog schema migrations for PostgreSQL: how a database written at an older version of
-- schema_postgres.sql becomes current (the counterpart of migrations.sql; the version count is
-- schema_postgres.sql's own).
--
-- schema_postgres.sql is the full definition of the current schema; this file holds only the
-- steps from one version to the next. Each section starts with a line `-- migration N:
-- description` and takes a database from version N-1 to N. At open, every section above the
-- database's steplog_meta.schema_version runs in ONE transaction, under the advisory lock that
-- also serialises creating the schema, together with: dropping steplog's views and creating
-- again the views part of schema_postgres.sql (its "Audit views" line to the end: views, and
-- the functions only they use, hold no data, so their definition lives only there), setting
-- steplog_meta.schema_version, and one schema_migrations row per section. All of it or none.
--
-- Only the views schema_postgres.sql defines are dropped, each by name and without CASCADE: a
-- view of the database's owner built on one of them stops the upgrade (and is named in the
-- error) instead of vanishing with it. A section that retires a view drops it itself.
-- Tables, indexes, triggers and the functions the triggers run are never re-created from
-- schema_postgres.sql: what a section adds must be here, and tests/test_postgres_migrations.py
-- checks that an upgraded database equals a new one.
--
-- Each section is sent as one script, as schema_postgres.sql is (PostgreSQL splits it).

-- migration 2: audit views (llm_calls, step_runs, file_writes, cache_stats, job_summary) and the functions they read events with (views only)

-- migration 3: workers and their leases (the queue); jobs queued by submit; jobs by status

-- Projection: one row per worker (a `steplog worker`, or a run/resume process) from its stream
-- worker:<worker_id>: its lease (alive while beat_ts + lease_s is ahead and stopped_ts is NULL)
-- and the jobs its last heartbeat named (a JSON list).
CREATE TABLE IF NOT EXISTS workers (
    worker_id    text             PRIMARY KEY,
    kind         text             NOT NULL,
    host         text             NOT NULL,
    pid          bigint           NOT NULL,
    started      text             NOT NULL,
    lease_s      double precision NOT NULL,
    concurrency  bigint           NOT NULL,
    pipeline_dir text,
    started_ts   text             NOT NULL,
    beat_ts      text             NOT NULL,
    jobs         text             NOT NULL,
    stopped_ts   text,
    seq          bigint           NOT NULL
);

-- Workers look for queued jobs and running ones whose owner may be gone: by status.
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status);

-- A job with job.created as its last status event was shown 'created'; it is now 'queued'
-- (a fork's job.forked still leaves 'created').
UPDATE jobs SET status = 'queued'
WHERE status = 'created'
  AND NOT EXISTS (SELECT 1 FROM events e WHERE e.job_id = jobs.job_id AND e.type = 'job.forked');

-- migration 4: jobs.batch, the batch a job was created in (run/submit --inputs), and its index
-- (IF NOT EXISTS: applied again over a database that has them already, it changes nothing)
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS batch text;

CREATE INDEX IF NOT EXISTS jobs_batch ON jobs (batch) WHERE batch IS NOT NULL;

-- migration 5: calls_in_flight and an index of llm.requests, for shared limits and single flight
-- Projection: one row per call in flight (an llm.request with an endpoint, until its answer or
-- its job's end, resume or fork); owner: the llm.request's owner as JSON text.
CREATE TABLE IF NOT EXISTS calls_in_flight (
    job_id    text   NOT NULL,
    step      text   NOT NULL,
    endpoint  text   NOT NULL,
    cache_key text   NOT NULL,
    attempt   bigint NOT NULL,
    owner     text,
    ts        text   NOT NULL,
    seq       bigint NOT NULL,
    PRIMARY KEY (job_id, step)
);

CREATE INDEX IF NOT EXISTS calls_in_flight_endpoint ON calls_in_flight (endpoint);
CREATE INDEX IF NOT EXISTS calls_in_flight_cache_key ON calls_in_flight (cache_key);

-- An endpoint's latest llm.requests, for requests_per_minute across processes; partial.
CREATE INDEX IF NOT EXISTS events_llm_requests
    ON events ((data ->> 'endpoint'), ts)
    WHERE type = 'llm.request';

-- The calls the history leaves in flight: the fold of projections/flights.py, in SQL.
INSERT INTO calls_in_flight (job_id, step, endpoint, cache_key, attempt, owner, ts, seq)
SELECT r.job_id, r.step, r.data ->> 'endpoint', r.data ->> 'cache_key',
       coalesce((r.data ->> 'attempt')::bigint, 1),
       CASE WHEN json_typeof(r.data -> 'owner') = 'object' THEN (r.data -> 'owner')::text END,
       r.ts, r.seq
FROM events AS r
WHERE r.type = 'llm.request' AND r.step IS NOT NULL
  AND json_typeof(r.data -> 'endpoint') = 'string'
  AND NOT EXISTS (
      SELECT 1 FROM events AS later
      WHERE later.job_id = r.job_id AND later.seq > r.seq
        AND (later.type IN ('job.succeeded', 'job.failed', 'job.interrupted', 'job.cancelled',
                            'job.resumed', 'job.forked')
             OR (later.type IN ('llm.request', 'llm.response') AND later.step = r.step
                 AND json_typeof(later.data -> 'endpoint') = 'string')))
ON CONFLICT (job_id, step) DO NOTHING;
