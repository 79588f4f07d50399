-- steplog schema migrations: how a database written at an older schema version becomes current.
--
-- schema.sql is the full definition of the current schema; this file holds only the steps from
-- one version to the next. Each section starts with a line `-- migration N: description` and
-- takes a database from version N-1 to N. At open, every section above the file's
-- PRAGMA user_version runs in ONE transaction together with: dropping and re-creating every
-- view from schema.sql (views hold no data, so their definition lives only there), setting
-- user_version and steplog_meta.schema_version, and one schema_migrations row per section.
-- Tables, indexes and triggers are never re-created from schema.sql: what a section adds must
-- be here, and tests/test_migrations.py checks that an upgraded file equals a new one.

-- migration 2: audit views (llm_calls, step_runs, file_writes, cache_stats, job_summary), schema_migrations, REPLACE-proof triggers, the previous-run index, the breakers projection
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     INTEGER PRIMARY KEY,
    ts          TEXT    NOT NULL,             -- when it was applied, ISO 8601 UTC
    description TEXT    NOT NULL
);

-- INSERT OR REPLACE could rewrite an event or a blob without firing the DELETE trigger.
CREATE TRIGGER IF NOT EXISTS events_append_only_replace
BEFORE INSERT ON events
WHEN EXISTS (
    SELECT 1 FROM events
    WHERE seq = NEW.seq OR (job_id = NEW.job_id AND version = NEW.version)
)
BEGIN
    SELECT RAISE(ABORT, 'steplog: events is append-only (UNIQUE job_id, version or seq: REPLACE refused)');
END;

CREATE TRIGGER IF NOT EXISTS blobs_immutable_replace
BEFORE INSERT ON blobs
WHEN EXISTS (SELECT 1 FROM blobs WHERE sha256 = NEW.sha256)
BEGIN
    SELECT RAISE(IGNORE);  -- content-addressed: the same sha256 already holds the same bytes
END;

-- A step's previous run, for explaining cache misses (executor/cachehistory.py).
CREATE INDEX IF NOT EXISTS events_cache_runs
    ON events (step, json_extract(data, '$.pipeline'), seq)
    WHERE type IN ('cache.hit', 'cache.miss');

-- Circuit breakers per provider endpoint, a projection of llm.response and provider.* events.
CREATE TABLE IF NOT EXISTS breakers (
    endpoint TEXT PRIMARY KEY,
    status   TEXT    NOT NULL,
    failures INTEGER NOT NULL,
    until    REAL    NOT NULL,
    provider TEXT    NOT NULL,
    seq      INTEGER NOT NULL
) WITHOUT ROWID;

-- migration 3: cache_refused, the sticky record of answers a step could not use
CREATE TABLE IF NOT EXISTS cache_refused (
    cache_key       TEXT    NOT NULL,
    response_sha256 TEXT    NOT NULL,
    seq             INTEGER NOT NULL,         -- the first cache.invalidated that refused it
    PRIMARY KEY (cache_key, response_sha256)
) WITHOUT ROWID;

-- migration 4: job_summary counts answered and unanswered calls beside failed ones (views only)

-- migration 5: llm_calls and job_summary show what calls in flight reserve against the budget (views only)

-- migration 6: workers and their leases (the queue); jobs queued by submit; jobs by status

-- Projection: one row per worker (a `steplog worker`, or a run/resume process) from its stream
-- worker:<worker_id>: its lease (alive while beat_ts + lease_s is ahead and stopped_ts is NULL)
-- and the jobs its last heartbeat named (a JSON list). Equal to projections.leases over all
-- events; tested.
CREATE TABLE IF NOT EXISTS workers (
    worker_id    TEXT PRIMARY KEY,
    kind         TEXT    NOT NULL,            -- worker | run
    host         TEXT    NOT NULL,
    pid          INTEGER NOT NULL,
    started      TEXT    NOT NULL,            -- the process's start marker (guards PID reuse)
    lease_s      REAL    NOT NULL,
    concurrency  INTEGER NOT NULL,
    pipeline_dir TEXT,
    started_ts   TEXT    NOT NULL,
    beat_ts      TEXT    NOT NULL,            -- worker.started or the last worker.heartbeat
    jobs         TEXT    NOT NULL,
    stopped_ts   TEXT,
    seq          INTEGER NOT NULL
) WITHOUT ROWID;

-- Workers look for queued jobs and running ones whose owner may be gone: by status.
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status);

-- A job with job.created as its last status event was shown 'created'; it is now 'queued'
-- (a fork's job.forked still leaves 'created').
UPDATE jobs SET status = 'queued'
WHERE status = 'created'
  AND NOT EXISTS (SELECT 1 FROM events e WHERE e.job_id = jobs.job_id AND e.type = 'job.forked');

-- migration 7: jobs.batch, the batch a job was created in (run/submit --inputs), and its index
ALTER TABLE jobs ADD COLUMN batch TEXT;

CREATE INDEX IF NOT EXISTS jobs_batch ON jobs (batch) WHERE batch IS NOT NULL;

-- migration 8: calls_in_flight and an index of llm.requests, for shared limits and single flight
CREATE TABLE IF NOT EXISTS calls_in_flight (
    job_id    TEXT    NOT NULL,
    step      TEXT    NOT NULL,
    endpoint  TEXT    NOT NULL,
    cache_key TEXT    NOT NULL,
    attempt   INTEGER NOT NULL,
    owner     TEXT,
    ts        TEXT    NOT NULL,
    seq       INTEGER NOT NULL,
    PRIMARY KEY (job_id, step)
) WITHOUT ROWID;

CREATE INDEX IF NOT EXISTS calls_in_flight_endpoint ON calls_in_flight (endpoint);
CREATE INDEX IF NOT EXISTS calls_in_flight_cache_key ON calls_in_flight (cache_key);

-- An endpoint's latest llm.requests, for requests_per_minute across processes; partial, so
-- only llm.request rows are indexed (projections/sql_tables.py `recent`, its one query).
CREATE INDEX IF NOT EXISTS events_llm_requests
    ON events (json_extract(data, '$.endpoint'), ts)
    WHERE type = 'llm.request';

-- The calls the history leaves in flight: the fold of projections/flights.py, in SQL.
INSERT INTO calls_in_flight (job_id, step, endpoint, cache_key, attempt, owner, ts, seq)
SELECT r.job_id, r.step, json_extract(r.data, '$.endpoint'), json_extract(r.data, '$.cache_key'),
       coalesce(json_extract(r.data, '$.attempt'), 1), json(json_extract(r.data, '$.owner')),
       r.ts, r.seq
FROM events AS r
WHERE r.type = 'llm.request' AND r.step IS NOT NULL
  AND json_type(r.data, '$.endpoint') = 'text'
  AND NOT EXISTS (
      SELECT 1 FROM events AS later
      WHERE later.job_id = r.job_id AND later.seq > r.seq
        AND (later.type IN ('job.succeeded', 'job.failed', 'job.interrupted', 'job.cancelled',
                            'job.resumed', 'job.forked')
             OR (later.type IN ('llm.request', 'llm.response') AND later.step = r.step
                 AND json_type(later.data, '$.endpoint') = 'text')));
