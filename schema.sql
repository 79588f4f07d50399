-- steplog schema, version 8.
--
-- The single definition of the database. Applied at open (one transaction) to an empty file;
-- the schema version lives in PRAGMA user_version and in steplog_meta, set by the code that
-- applies this file, and PRAGMA application_id marks the file as steplog's. An older database
-- is upgraded at open by migrations.sql (one transaction), recorded in schema_migrations.
--
-- `events` is the source of truth. Everything else is either content (`blobs`, immutable) or a
-- projection kept in the same transaction as the append (`jobs`, `cache_index`, `cache_refused`,
-- `breakers`, `workers`, `calls_in_flight`) that can be dropped and rebuilt from `events` at any time.

CREATE TABLE IF NOT EXISTS steplog_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- One row per state change. seq is the global position, version the position within the job.
CREATE TABLE IF NOT EXISTS events (
    seq       INTEGER PRIMARY KEY,            -- rowid: global order of appends
    job_id    TEXT    NOT NULL,
    version   INTEGER NOT NULL CHECK (version >= 1),
    ts        TEXT    NOT NULL,               -- ISO 8601 UTC with a Z suffix
    level     TEXT    NOT NULL CHECK (level IN ('DEBUG', 'INFO', 'WARNING', 'ERROR')),
    type      TEXT    NOT NULL,               -- dotted, e.g. step.succeeded
    step      TEXT,                           -- NULL for job-level events
    data      TEXT    NOT NULL CHECK (json_valid(data)),
    prev_hash TEXT    NOT NULL,               -- hash of the job's previous event (64 zeros for the first)
    hash      TEXT    NOT NULL,               -- sha256 over prev_hash and this row's fields
    UNIQUE (job_id, version)                  -- the optimistic-concurrency guard
);

CREATE TRIGGER IF NOT EXISTS events_append_only_update
BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'steplog: events is append-only (UPDATE refused)');
END;

CREATE TRIGGER IF NOT EXISTS events_append_only_delete
BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'steplog: events is append-only (DELETE refused)');
END;

-- INSERT OR REPLACE deletes the row it conflicts with without firing DELETE triggers (unless
-- recursive_triggers is on, which a plain sqlite3 shell does not set), so a conflicting insert
-- is refused here. The message keeps "UNIQUE" so a racing writer still reads as a version conflict.
CREATE TRIGGER IF NOT EXISTS events_append_only_replace
BEFORE INSERT ON events
WHEN EXISTS (
    SELECT 1 FROM events
    WHERE seq = NEW.seq OR (job_id = NEW.job_id AND version = NEW.version)
)
BEGIN
    SELECT RAISE(ABORT, 'steplog: events is append-only (UNIQUE job_id, version or seq: REPLACE refused)');
END;

-- Content-addressed payloads: prompts, responses, step outputs, file contents. Stored once.
-- A rowid table on purpose: contents are large, so they go at the end of the table and only
-- the small sha256 index entry lands at a random place (WITHOUT ROWID would split pages).
CREATE TABLE IF NOT EXISTS blobs (
    sha256  TEXT PRIMARY KEY,
    size    INTEGER NOT NULL,
    content BLOB    NOT NULL
);

CREATE TRIGGER IF NOT EXISTS blobs_immutable_update
BEFORE UPDATE ON blobs
BEGIN
    SELECT RAISE(ABORT, 'steplog: blobs are immutable (UPDATE refused)');
END;

CREATE TRIGGER IF NOT EXISTS blobs_immutable_replace
BEFORE INSERT ON blobs
WHEN EXISTS (SELECT 1 FROM blobs WHERE sha256 = NEW.sha256)
BEGIN
    SELECT RAISE(IGNORE);  -- content-addressed: the same sha256 already holds the same bytes
END;

-- The head of each job's stream, owned by the event store: the current version and the last
-- hash continue the chain without scanning events. Written in the same transaction as the append.
CREATE TABLE IF NOT EXISTS streams (
    job_id     TEXT PRIMARY KEY,
    version    INTEGER NOT NULL,
    last_hash  TEXT    NOT NULL,
    last_seq   INTEGER NOT NULL,
    created_ts TEXT    NOT NULL,
    updated_ts TEXT    NOT NULL
) WITHOUT ROWID;

-- Projection: one row per job for `steplog jobs`. Equal to the manifest fold; tested.
-- Written only when a job's status changes; when it last changed at all is in `streams`.
-- batch: job.created's `batch` (run/submit --inputs), NULL for a job made on its own.
CREATE TABLE IF NOT EXISTS jobs (
    job_id     TEXT PRIMARY KEY,
    pipeline   TEXT,
    status     TEXT    NOT NULL,
    created_ts TEXT    NOT NULL,
    batch      TEXT
) WITHOUT ROWID;

-- `steplog jobs --batch B`: a batch's jobs without reading every row.
CREATE INDEX IF NOT EXISTS jobs_batch ON jobs (batch) WHERE batch IS NOT NULL;

-- Projection: cache key -> the first successful response for it, shared by every job.
-- Equal to projections.cache.fold_cache_index over all events; tested.
CREATE TABLE IF NOT EXISTS cache_index (
    cache_key       TEXT PRIMARY KEY,
    response_sha256 TEXT    NOT NULL,
    origin_job      TEXT    NOT NULL,
    origin_step     TEXT,
    seq             INTEGER NOT NULL,
    tokens_in       INTEGER NOT NULL DEFAULT 0,
    tokens_out      INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

-- Projection: answers a step could not use (cache.invalidated naming its response), per key.
-- Sticky: such an answer never enters cache_index again, whatever event later names it.
CREATE TABLE IF NOT EXISTS cache_refused (
    cache_key       TEXT    NOT NULL,
    response_sha256 TEXT    NOT NULL,
    seq             INTEGER NOT NULL,         -- the first cache.invalidated that refused it
    PRIMARY KEY (cache_key, response_sha256)
) WITHOUT ROWID;

-- "Why did this step call the model again?": the previous run of a step is its most recent
-- cache.hit/cache.miss with the same pipeline name (any job). Partial, so only cache events
-- are indexed (see executor/cachehistory.py, the one query that uses it).
CREATE INDEX IF NOT EXISTS events_cache_runs
    ON events (step, json_extract(data, '$.pipeline'), seq)
    WHERE type IN ('cache.hit', 'cache.miss');

-- Projection: one circuit breaker per provider endpoint (kind + public base URL), shared by every
-- job and process using this file. Equal to projections.breaker.project over all events; tested.
-- status: closed | open | half_open; until: epoch seconds (open: when a probe may go,
-- half_open: when the probe's claim lapses).
CREATE TABLE IF NOT EXISTS breakers (
    endpoint TEXT PRIMARY KEY,
    status   TEXT    NOT NULL,
    failures INTEGER NOT NULL,
    until    REAL    NOT NULL,
    provider TEXT    NOT NULL,
    seq      INTEGER NOT NULL
) WITHOUT ROWID;

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

-- Projection: one row per call in flight (an llm.request of a provider with an endpoint, until
-- its llm.response; its job ending, resuming or being forked clears the job's rows), shared by
-- every process using this file. Equal to projections.flights.project over all events; tested.
-- The shared limits count an endpoint's rows, single flight looks a cache key up; a row whose
-- owner (JSON: pid, host, started) is dead no longer counts (executor/flights.py decides).
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

-- Migrations and audit views -------------------------------------------------------------------

-- One row per schema change applied to this file: the version it created or upgraded to.
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     INTEGER PRIMARY KEY,
    ts          TEXT    NOT NULL,             -- when it was applied, ISO 8601 UTC
    description TEXT    NOT NULL
);

-- No index on `type` for the views: bench/views.py measures them within ~1.3x of a plain scan
-- of `events` (and a job's rows within ~1.5x of a plain SELECT of that job) without one, while
-- an index on (type, job_id, version) costs every append about a quarter more.

-- Audit views: plain SQL over `events`, usable from the sqlite3 shell, sqlite-utils, Datasette.
-- Pairs are found by position, not by key alone: within one (job, step) a step's events follow
-- each other in `version` order, and one step of a job never runs twice at the same time, so
-- the event right after an llm.request of that (job, step) is its llm.response if it has one.
-- This stays right when a call is retried (each attempt is its own request/response pair),
-- when a run was interrupted between the two, and when a resumed job runs a step again.
-- `copied` marks a fork's copied history: the rows before its (latest) job.forked, which
-- happened in the source job and are counted there too. Every window is partitioned by job_id
-- alone (a step's next event: the next row ordered by step, version, if of the same step), and
-- ordered alike (one sort), so that `WHERE job_id = ?` is pushed into the window and reaches
-- the (job_id, version) index.

-- One row per provider call attempt (llm.request), with its llm.response when there is one.
-- success/duration_s/tokens are NULL when no response was recorded (the process died mid-call).
CREATE VIEW IF NOT EXISTS llm_calls AS
WITH llm AS (
    SELECT seq, job_id, version, ts, type, step, data,
           CASE WHEN lead(step) OVER by_step = step THEN lead(seq) OVER by_step END AS next_seq,
           max(CASE WHEN type = 'job.forked' THEN version END) OVER whole_job AS forked_at
    FROM events
    WHERE type IN ('llm.request', 'llm.response', 'job.forked')
    WINDOW by_step AS (PARTITION BY job_id ORDER BY step, version),
           whole_job AS (by_step ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
)
SELECT req.job_id,
       req.step,
       json_extract(req.data, '$.provider')        AS provider,
       json_extract(req.data, '$.model')           AS model,
       req.ts                                      AS started,
       json_extract(res.data, '$.duration_s')      AS duration_s,
       json_extract(res.data, '$.tokens_in')       AS tokens_in,
       json_extract(res.data, '$.tokens_out')      AS tokens_out,
       json_extract(res.data, '$.success')         AS success,
       json_extract(res.data, '$.status')          AS status,
       json_extract(res.data, '$.error')           AS error,
       json_extract(res.data, '$.error_class')     AS error_class,
       json_extract(req.data, '$.cache_key')       AS cache_key,
       json_extract(req.data, '$.attempt')         AS attempt,
       json_extract(res.data, '$.cost')            AS cost,
       res.ts                                      AS finished,
       json_extract(req.data, '$.kind')            AS kind,
       json_extract(res.data, '$.model')           AS response_model,
       json_extract(req.data, '$.prompt_tokens')   AS prompt_tokens,
       json_extract(req.data, '$.prompt_sha256')   AS prompt_sha256,
       json_extract(res.data, '$.response_sha256') AS response_sha256,
       json_extract(res.data, '$.finish_reason')   AS finish_reason,
       json_extract(req.data, '$.tokens_reserved') AS tokens_reserved,
       json_extract(req.data, '$.cost_reserved')   AS cost_reserved,
       req.version                                 AS version,
       req.seq                                     AS seq,
       coalesce(req.version < req.forked_at, 0)    AS copied
FROM llm AS req
LEFT JOIN events AS res
       ON res.seq = req.next_seq
      AND res.type = 'llm.response'
      AND json_extract(res.data, '$.attempt') = json_extract(req.data, '$.attempt')
      AND json_extract(res.data, '$.cache_key') = json_extract(req.data, '$.cache_key')
WHERE req.type = 'llm.request';

-- One row per run of a step: each step.started with the step.succeeded / step.failed that
-- ended it, and each step.skipped (a resume reusing an earlier result). A run with no end is
-- 'interrupted' once the step started again or the job moved on (resumed, ended, or forked: a
-- fork's copied history stops at its point), else 'running'.
CREATE VIEW IF NOT EXISTS step_runs AS
WITH marks AS (
    SELECT seq, job_id, version, ts, type, step, data,
           CASE WHEN lead(step) OVER by_step = step THEN lead(seq) OVER by_step END AS next_seq,
           max(CASE WHEN type = 'job.forked' THEN version END) OVER whole_job AS forked_at
    FROM events
    WHERE type IN ('step.started', 'step.succeeded', 'step.failed', 'step.skipped', 'job.forked')
    WINDOW by_step AS (PARTITION BY job_id ORDER BY step, version),
           whole_job AS (by_step ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
)
SELECT s.job_id,
       s.step,
       json_extract(s.data, '$.attempt') AS attempt,
       CASE
           WHEN s.type = 'step.skipped' THEN 'skipped'
           WHEN e.type = 'step.succeeded' THEN 'succeeded'
           WHEN e.type = 'step.failed' THEN 'failed'
           WHEN s.next_seq IS NOT NULL OR EXISTS (
               SELECT 1 FROM events AS later
               WHERE later.job_id = s.job_id AND later.version > s.version
                 AND later.type IN ('job.resumed', 'job.succeeded', 'job.failed',
                                    'job.cancelled', 'job.interrupted', 'job.forked')
           ) THEN 'interrupted'
           ELSE 'running'
       END AS status,
       s.ts AS started,
       CASE WHEN s.type = 'step.skipped' THEN s.ts ELSE e.ts END AS finished,
       CASE WHEN s.type = 'step.skipped' THEN 0.0 ELSE json_extract(e.data, '$.duration_s') END
           AS duration_s,
       CASE
           WHEN s.type = 'step.skipped' THEN NULL
           WHEN e.type = 'step.succeeded' THEN json_extract(e.data, '$.cache_hit')
           ELSE EXISTS (
               SELECT 1 FROM events AS h
               WHERE h.type = 'cache.hit' AND h.job_id = s.job_id AND h.step = s.step
                 AND h.version > s.version
                 AND h.seq < coalesce(s.next_seq, 9223372036854775807)
           )
       END AS cache_hit,
       json_extract(e.data, '$.error')      AS error,
       json_extract(e.data, '$.error_type') AS error_type,
       json_extract(e.data, '$.cache_key')  AS cache_key,
       json_extract(s.data, '$.reason')     AS skip_reason,
       s.version                            AS version,
       s.seq                                AS seq,
       coalesce(s.version < s.forked_at, 0) AS copied
FROM marks AS s
LEFT JOIN events AS e
       ON e.seq = s.next_seq AND e.type IN ('step.succeeded', 'step.failed')
WHERE s.type IN ('step.started', 'step.skipped');

-- One row per file.written: every file a step put in the workspace, or found already identical.
CREATE VIEW IF NOT EXISTS file_writes AS
WITH w AS (
    SELECT seq, job_id, version, ts, type, step, data,
           max(CASE WHEN type = 'job.forked' THEN version END) OVER (PARTITION BY job_id)
               AS forked_at
    FROM events
    WHERE type IN ('file.written', 'job.forked')
)
SELECT job_id,
       step,
       json_extract(data, '$.path')   AS path,
       json_extract(data, '$.sha256') AS sha256,
       json_extract(data, '$.wrote')  AS wrote,
       json_extract(data, '$.reason') AS reason,
       ts,
       json_extract(data, '$.size')   AS size,
       version,
       seq,
       coalesce(version < forked_at, 0) AS copied
FROM w
WHERE type = 'file.written';

-- Cache lookups per provider and model across all jobs. A hit carries no provider, so it is
-- attributed through its cache key to the llm.request that paid for the answer. A fork's copied
-- history (its events before job.forked) looked nothing up, so it is not counted again.
CREATE VIEW IF NOT EXISTS cache_stats AS
WITH forks AS (  -- where each fork's copied history ends
    SELECT job_id, max(version) AS forked_at FROM events WHERE type = 'job.forked' GROUP BY job_id
),
lookups AS (
    SELECT l.type,
           json_extract(l.data, '$.cache_key') AS cache_key,
           coalesce(json_extract(l.data, '$.tokens_saved'), 0) AS tokens_saved
    FROM events AS l
    LEFT JOIN forks AS f ON f.job_id = l.job_id
    WHERE l.type IN ('cache.hit', 'cache.miss') AND NOT coalesce(l.version < f.forked_at, 0)
),
keys AS (
    SELECT json_extract(data, '$.cache_key') AS cache_key,
           min(json_extract(data, '$.provider')) AS provider,
           min(json_extract(data, '$.model')) AS model
    FROM events
    WHERE type = 'llm.request'
    GROUP BY 1
)
SELECT k.provider,
       k.model,
       sum(l.type = 'cache.hit')  AS hits,
       sum(l.type = 'cache.miss') AS misses,
       sum(l.tokens_saved)        AS tokens_saved,
       count(*)                   AS lookups,
       round(1.0 * sum(l.type = 'cache.hit') / count(*), 4) AS hit_rate
FROM lookups AS l
LEFT JOIN keys AS k ON k.cache_key = l.cache_key
GROUP BY k.provider, k.model;

-- One row per job: the `jobs` projection with totals folded from the job's events.
-- calls are the requests made; answered + failed + unanswered of them, as the manifest counts.
-- steps_succeeded / steps_failed count each step by its latest outcome (skipped = succeeded
-- earlier), so a step that failed and then succeeded on resume counts once, as succeeded.
-- Written so that `WHERE job_id = ?` reaches the per-job aggregate (an inner join on it) and
-- so the (job_id, version) index, instead of aggregating every job first.
CREATE VIEW IF NOT EXISTS job_summary AS
WITH per_job AS (
    SELECT job_id,
           min(CASE WHEN type IN ('job.started', 'job.resumed') THEN version END) AS first_start,
           -- job.forked reopens a copied history that had ended, as in the manifest
           max(CASE WHEN type IN ('job.started', 'job.resumed', 'job.forked') THEN version END)
               AS last_start,
           max(CASE WHEN type IN ('job.succeeded', 'job.failed', 'job.cancelled',
                                  'job.interrupted') THEN version END) AS last_end,
           sum(type = 'llm.request') AS calls,
           sum(type = 'llm.response' AND json_extract(data, '$.success') = 1) AS answered_calls,
           sum(type = 'llm.response' AND json_extract(data, '$.success') = 0) AS failed_calls,
           sum(CASE WHEN type = 'llm.response' THEN json_extract(data, '$.tokens_in') END)
               AS tokens_in,
           sum(CASE WHEN type = 'llm.response' THEN json_extract(data, '$.tokens_out') END)
               AS tokens_out,
           sum(CASE WHEN type = 'llm.response' THEN json_extract(data, '$.cost') END) AS cost,
           sum(type = 'cache.hit') AS cache_hits,
           sum(type = 'cache.miss') AS cache_misses,
           sum(CASE WHEN type = 'cache.hit' THEN json_extract(data, '$.tokens_saved') END)
               AS tokens_saved
    FROM events
    WHERE type IN ('job.created', 'job.started', 'job.resumed', 'job.succeeded', 'job.failed',
                   'job.cancelled', 'job.interrupted', 'job.forked', 'llm.request', 'llm.response',
                   'cache.hit', 'cache.miss')
    GROUP BY job_id
),
bounds AS (  -- timestamps by position (version), not by comparing ts strings
    SELECT p.*,
           (SELECT ts FROM events AS e WHERE e.job_id = p.job_id AND e.version = p.first_start)
               AS started,
           CASE WHEN p.last_end > p.last_start THEN
               (SELECT ts FROM events AS e WHERE e.job_id = p.job_id AND e.version = p.last_end)
           END AS finished,
           (SELECT json_object(
                       'succeeded', coalesce(sum(type IN ('step.succeeded', 'step.skipped')), 0),
                       'failed', coalesce(sum(type = 'step.failed'), 0))
            FROM (
                SELECT type, max(version)  -- SQLite: `type` comes from the row with max(version)
                FROM events AS o
                WHERE o.type IN ('step.started', 'step.succeeded', 'step.failed', 'step.skipped')
                  AND o.job_id = p.job_id
                GROUP BY step
            )) AS outcomes  -- each step's latest outcome, counted
    FROM per_job AS p
)
SELECT b.job_id,
       j.pipeline,
       j.status,
       b.started,
       b.finished,
       round((julianday(coalesce(b.finished, s.updated_ts)) - julianday(b.started)) * 86400, 6)
           AS duration_s,
       (SELECT count(*) FROM events AS c, json_each(c.data, '$.steps')
        WHERE c.type = 'job.created' AND c.job_id = b.job_id) AS steps,
       json_extract(b.outcomes, '$.succeeded') AS steps_succeeded,
       json_extract(b.outcomes, '$.failed')    AS steps_failed,
       coalesce(b.tokens_in, 0)    AS tokens_in,
       coalesce(b.tokens_out, 0)   AS tokens_out,
       b.cost                      AS cost,
       b.calls                     AS calls,
       b.answered_calls            AS answered_calls,
       b.failed_calls              AS failed_calls,
       -- requests no response answered (llm_calls' success IS NULL): in flight, or abandoned
       (SELECT count(*) FROM llm_calls AS c WHERE c.job_id = b.job_id AND c.success IS NULL)
                                   AS unanswered_calls,
       -- held against the budget by the calls in flight of the run under way (0 once it ends)
       CASE WHEN j.status = 'running' THEN
           (SELECT coalesce(sum(c.tokens_reserved), 0) FROM llm_calls AS c
            WHERE c.job_id = b.job_id AND c.success IS NULL AND c.version > b.last_start)
       ELSE 0 END                  AS tokens_reserved,
       CASE WHEN j.status = 'running' THEN
           (SELECT round(coalesce(sum(c.cost_reserved), 0), 9) FROM llm_calls AS c
            WHERE c.job_id = b.job_id AND c.success IS NULL AND c.version > b.last_start)
       ELSE 0.0 END                AS cost_reserved,
       b.cache_hits                AS cache_hits,
       b.cache_misses              AS cache_misses,
       coalesce(b.tokens_saved, 0) AS tokens_saved,
       j.created_ts                AS created
FROM bounds AS b
JOIN jobs AS j ON j.job_id = b.job_id
JOIN streams AS s ON s.job_id = b.job_id;
