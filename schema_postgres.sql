-- steplog schema for PostgreSQL, version 5.
--
-- The single definition of the PostgreSQL store's schema (steplog.eventstore.postgres), the
-- counterpart of schema.sql with the same table, view and column names. Applied at open, in
-- one transaction, to a database whose current schema (the first one on search_path, `public`
-- by default) holds no table yet; the code that applies it records the version in steplog_meta
-- and schema_migrations in that same transaction. Its version count is its own (this file
-- starts at 1; schema.sql's is SQLite's). An older database is upgraded at open by
-- migrations_postgres.sql (one transaction, under the same advisory lock), recorded in
-- schema_migrations.
--
-- `events` is the source of truth. Everything else is either content (`blobs`, immutable), the
-- store's bookkeeping (`streams`) or a projection kept in the same transaction as the append
-- (`jobs`, `cache_index`, `cache_refused`, `breakers`, `workers`, `calls_in_flight`) that can be rebuilt from `events`; the
-- audit views at the end read `events` (and `jobs`, `streams`) only.
--
-- The whole file is sent as one script (PostgreSQL splits it itself; function bodies hold ';').
--
-- A role that appends needs INSERT on events, blobs and streams, UPDATE on streams, and UPDATE
-- on events for `LOCK TABLE events IN EXCLUSIVE MODE` (which PostgreSQL grants to UPDATE,
-- DELETE or TRUNCATE holders): the triggers below still refuse every UPDATE of events.

CREATE TABLE steplog_meta (
    key   text PRIMARY KEY,
    value text NOT NULL                        -- ('application', 'steplog'), ('schema_version', N)
);

-- One row per state change. seq is the global position, version the position within the job.
-- seq is max(seq) + 1, assigned by the appender while it holds the EXCLUSIVE lock on this table,
-- so seqs have no gaps and become visible in commit order: a reader that sees seq N sees every
-- seq below it, and a follower reading `seq > cursor` never skips one that commits later.
CREATE TABLE events (
    seq       bigint PRIMARY KEY CHECK (seq >= 1),
    job_id    text   NOT NULL,
    version   bigint NOT NULL CHECK (version >= 1),
    ts        text   NOT NULL,                 -- ISO 8601 UTC with a Z suffix, exactly as given
    level     text   NOT NULL CHECK (level IN ('DEBUG', 'INFO', 'WARNING', 'ERROR')),
    type      text   NOT NULL,                 -- dotted, e.g. step.succeeded
    step      text,                            -- NULL for job-level events
    data      json   NOT NULL,                 -- json, not jsonb: it keeps the exact text that was hashed
    prev_hash text   NOT NULL,                 -- hash of the job's previous event (64 zeros for the first)
    hash      text   NOT NULL,                 -- sha256 over prev_hash and this row's fields
    UNIQUE (job_id, version)                   -- the optimistic-concurrency guard
);

-- Append-only: every UPDATE, DELETE or TRUNCATE statement on events or blobs is refused, even
-- one that matches no row (statement-level triggers), and even with session_replication_role
-- = replica (ENABLE ALWAYS). INSERT ... ON CONFLICT DO UPDATE fires the UPDATE trigger too.
-- The message names the table and the operation: `steplog: events is append-only (UPDATE refused)`.
CREATE FUNCTION steplog_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'steplog: % (% refused)', TG_ARGV[0], TG_OP;
END
$$;

CREATE TRIGGER events_append_only
    BEFORE UPDATE OR DELETE OR TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION steplog_refuse_change('events is append-only');
ALTER TABLE events ENABLE ALWAYS TRIGGER events_append_only;

-- Followers LISTEN on steplog_events: every statement that inserts events notifies it, with the
-- highest seq it inserted as the payload, delivered when (and only if) the transaction commits.
CREATE FUNCTION steplog_notify_append() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    last bigint;
BEGIN
    SELECT max(seq) INTO last FROM appended;
    IF last IS NOT NULL THEN
        PERFORM pg_notify('steplog_events', last::text);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER events_notify
    AFTER INSERT ON events
    REFERENCING NEW TABLE AS appended
    FOR EACH STATEMENT EXECUTE FUNCTION steplog_notify_append();

-- Content-addressed payloads: prompts, responses, step outputs, file contents. Stored once;
-- inserted with ON CONFLICT (sha256) DO NOTHING (the same sha256 holds the same bytes).
CREATE TABLE blobs (
    sha256  text   PRIMARY KEY,
    size    bigint NOT NULL CHECK (size >= 0),
    content bytea  NOT NULL
);

CREATE TRIGGER blobs_immutable
    BEFORE UPDATE OR DELETE OR TRUNCATE ON blobs
    FOR EACH STATEMENT EXECUTE FUNCTION steplog_refuse_change('blobs are immutable');
ALTER TABLE blobs ENABLE ALWAYS TRIGGER blobs_immutable;

-- The head of each job's stream, owned by the event store: the current version and the last
-- hash continue the chain without scanning events. Written in the same transaction as the append.
CREATE TABLE streams (
    job_id     text   PRIMARY KEY,
    version    bigint NOT NULL,
    last_hash  text   NOT NULL,
    last_seq   bigint NOT NULL,
    created_ts text   NOT NULL,
    updated_ts text   NOT NULL
);

-- Projection: one row per job for `steplog jobs`. Equal to the manifest fold; tested.
-- Written only when a job's status changes; when it last changed at all is in `streams`.
-- batch: job.created's `batch` (run/submit --inputs), NULL for a job made on its own.
CREATE TABLE jobs (
    job_id     text PRIMARY KEY,
    pipeline   text,
    status     text NOT NULL,
    created_ts text NOT NULL,
    batch      text
);

-- `steplog jobs --batch B`: a batch's jobs without reading every row.
CREATE INDEX jobs_batch ON jobs (batch) WHERE batch IS NOT NULL;

-- Projection: cache key -> the first successful response for it, shared by every job.
CREATE TABLE cache_index (
    cache_key       text   PRIMARY KEY,
    response_sha256 text   NOT NULL,
    origin_job      text   NOT NULL,
    origin_step     text,
    seq             bigint NOT NULL,
    tokens_in       bigint NOT NULL DEFAULT 0,
    tokens_out      bigint NOT NULL DEFAULT 0
);

-- Projection: answers a step could not use (cache.invalidated naming its response), per key.
CREATE TABLE cache_refused (
    cache_key       text   NOT NULL,
    response_sha256 text   NOT NULL,
    seq             bigint NOT NULL,
    PRIMARY KEY (cache_key, response_sha256)
);

-- "Why did this step call the model again?": a step's latest cache.hit/cache.miss of the same
-- pipeline name (any job); partial, over cache events only (eventstore/reads.py cache_runs).
CREATE INDEX events_cache_runs
    ON events (step, (data ->> 'pipeline'), seq)
    WHERE type IN ('cache.hit', 'cache.miss');

-- Projection: one circuit breaker per provider endpoint; until: epoch seconds.
CREATE TABLE breakers (
    endpoint text             PRIMARY KEY,
    status   text             NOT NULL,
    failures bigint           NOT NULL,
    until    double precision NOT NULL,
    provider text             NOT NULL,
    seq      bigint           NOT NULL
);

-- Projection: one row per worker (a `steplog worker`, or a run/resume process) from its stream
-- worker:<worker_id>: its lease (alive while beat_ts + lease_s is ahead and stopped_ts is NULL)
-- and the jobs its last heartbeat named (a JSON list).
CREATE TABLE workers (
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
CREATE INDEX jobs_by_status ON jobs (status);

-- Projection: one row per call in flight (an llm.request with an endpoint, until its answer or
-- its job's end, resume or fork); owner: the llm.request's owner as JSON text.
CREATE TABLE calls_in_flight (
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

CREATE INDEX calls_in_flight_endpoint ON calls_in_flight (endpoint);
CREATE INDEX calls_in_flight_cache_key ON calls_in_flight (cache_key);

-- An endpoint's latest llm.requests, for requests_per_minute across processes; partial.
CREATE INDEX events_llm_requests
    ON events ((data ->> 'endpoint'), ts)
    WHERE type = 'llm.request';

-- One row per schema change applied to this database: the version it created or upgraded to.
CREATE TABLE schema_migrations (
    version     integer PRIMARY KEY,
    ts          text    NOT NULL,              -- when it was applied, ISO 8601 UTC
    description text    NOT NULL
);

-- Audit views ----------------------------------------------------------------------------------
-- From the line above to the end of the file: what an upgrade drops and creates again, every
-- time (views, and the functions only they use, hold no data: their definition lives only
-- here; see migrations_postgres.sql). The store finds this part by that line.
--
-- The five views of schema.sql, with its names, columns, column order and values: for the same
-- events, `SELECT * FROM view` gives equal rows on both stores (tests/test_postgres_views.py
-- checks it on real runs and on generated logs). The design is schema.sql's, and so are the
-- reasons, written there: pairs are found by position within a job, not by key alone; `copied`
-- marks a fork's copied history; every window is partitioned by job_id alone and ordered alike,
-- so that `WHERE job_id = $1` is pushed down into the window and reaches the (job_id, version)
-- index. What this dialect adds:
--
-- * Value types. SQLite's json_extract returns a JSON number as INTEGER or REAL, true/false as
--   1/0 and a string as TEXT. Here each field is read with the type its event model gives it
--   (bigint, double precision, text; a boolean cast to integer), so psycopg hands back int,
--   float and str where sqlite3 does, never Decimal or bool; a sum of bigint (numeric in
--   PostgreSQL) is cast back to bigint.
-- * One parse per event. `data` is json, its exact text, which PostgreSQL parses anew for every
--   `->>`; the views read the fields they need of an event at once, with json_to_record.
-- * NUL. PostgreSQL text cannot hold U+0000, and json refuses to unescape `\u0000` anywhere in
--   a document: one such character in an event's data would make every field of that event
--   unreadable, and so the whole view. SQLite's json_extract ends a string at its first NUL
--   (SQLite text is NUL-terminated); steplog_data() cuts such a string there too, so the values
--   are SQLite's. Data without an escaped NUL passes through untouched.
-- * Orders that decide a value are SQLite's: step names sort by their bytes (COLLATE "C", as
--   SQLite's BINARY; min() of provider names too), and job_summary adds a job's costs one by
--   one in version order, as SQLite's scan of the (job_id, version) index does: a float sum
--   depends on its order (SQLite 3.43 and later compensate the rounding, which can change the
--   last bit).
-- * Rounded columns (job_summary.duration_s and cost_reserved, cache_stats.hit_rate) round the
--   exact value half away from zero (steplog_round; hit_rate the exact ratio), which is what
--   SQLite's round() means; duration_s starts from julianday() computed exactly as SQLite does
--   (steplog_julianday). SQLite's own round() is not always that exact: 3.40 returns the double
--   next to the decimal for about one value in a few thousand (it reads its printed digits back
--   through long double arithmetic), and before 3.43 it rounds up values within 3e-16 of the
--   value below a half, which shows in the 6th decimal of durations of months. So the two agree
--   to the digits asked for, not always to the last bit.

-- An event's data, readable whatever text it holds: a JSON string holding an escaped NUL
-- (`\u0000` not preceded by an escaping backslash) ends just before it, as json_extract's
-- result does on SQLite. One SQL expression, which the planner inlines; the strpos test keeps
-- the regular expression away from every event without one.
CREATE OR REPLACE FUNCTION steplog_data(data json) RETURNS json
    LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT CASE
    WHEN strpos(data::text, $n$\u0000$n$) = 0 THEN data
    ELSE regexp_replace(
        data::text, $re$(?<!\\)((?:\\\\)*)\\u0000(?:[^"\\]|\\.)*$re$, $r$\1$r$, 'g')::json
END
$$;

-- SQLite's julianday() of a timestamp as steplog writes them (YYYY-MM-DDTHH:MM:SS[.f…]Z),
-- computed the way SQLite computes it, to the last bit: whole milliseconds (Meeus's day number;
-- the seconds with their fraction in double precision, times 1000, rounded half up) divided by
-- 86400000. NULL for any other text (SQLite reads a few other forms; steplog writes none).
CREATE OR REPLACE FUNCTION steplog_julianday(ts text) RETURNS double precision
    LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    part text[] := regexp_match(
        ts, '^([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})([.][0-9]+)?Z$');
    y int;
    mo int;
    d int;
    a int;
    s double precision;
BEGIN
    IF part IS NULL THEN
        RETURN NULL;
    END IF;
    y := part[1];
    mo := part[2];
    d := part[3];
    IF mo NOT BETWEEN 1 AND 12 OR d NOT BETWEEN 1 AND 31 OR part[4]::int > 24
            OR part[5]::int > 59 OR part[6]::int > 59 THEN
        RETURN NULL;
    END IF;
    IF mo <= 2 THEN
        y := y - 1;
        mo := mo + 12;
    END IF;
    a := y / 100;
    s := part[6]::double precision;
    IF part[7] IS NOT NULL THEN
        s := s + substr(part[7], 2)::double precision
                 / ('1e' || (length(part[7]) - 1))::double precision;
    END IF;
    RETURN ((36525 * (y + 4716) / 100 + 306001 * (mo + 1) / 10000 + d + 2 - a + a / 4)::bigint
                * 86400000 - 131716800000
            + part[4]::bigint * 3600000 + part[5]::bigint * 60000
            + trunc(s * 1000 + 0.5::double precision)::bigint)::double precision / 86400000;
END
$$;

-- SQLite's round(x, digits): the decimal x is, rounded half away from zero, as a double. x's
-- exact binary value is taken apart (x = m * 2^(e-52), m a 53-bit integer) because
-- float8::numeric keeps 15 significant digits only, too few for days counted in microseconds.
CREATE OR REPLACE FUNCTION steplog_round(x double precision, digits integer)
    RETURNS double precision LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    e integer;
    m numeric;
BEGIN
    IF x = 0 OR x IN ('Infinity', '-Infinity', 'NaN') THEN
        RETURN x;
    END IF;
    e := floor(ln(abs(x)) / ln(2::double precision));
    IF abs(x) < 2::double precision ^ e THEN
        e := e - 1;
    ELSIF abs(x) >= 2::double precision ^ (e + 1) THEN
        e := e + 1;
    END IF;
    m := (x * 2::double precision ^ (52 - e))::bigint;
    IF e >= 52 THEN
        m := m * 2::numeric ^ (e - 52);
    ELSE
        m := m * 5::numeric ^ (52 - e) * ('1e-' || (52 - e))::numeric;
    END IF;
    RETURN round(m, digits)::double precision;
END
$$;

-- One row per provider call attempt (llm.request), with its llm.response when there is one.
-- success/duration_s/tokens are NULL when no response was recorded (the process died mid-call).
CREATE VIEW llm_calls AS
WITH llm AS (
    SELECT seq, job_id, version, ts, type, step, data,
           CASE WHEN lead(step) OVER by_step = step THEN lead(seq) OVER by_step END AS next_seq,
           max(CASE WHEN type = 'job.forked' THEN version END) OVER whole_job AS forked_at
    FROM events
    WHERE type IN ('llm.request', 'llm.response', 'job.forked')
    WINDOW by_step AS (PARTITION BY job_id ORDER BY step COLLATE "C", version),
           whole_job AS (by_step ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
),
responses AS (
    SELECT res.seq, res.ts, r.*
    FROM events AS res,
         json_to_record(steplog_data(res.data)) AS r (
             model text, duration_s double precision, tokens_in bigint, tokens_out bigint,
             success boolean, status bigint, error text, error_class text, attempt bigint,
             cache_key text, cost double precision, response_sha256 text, finish_reason text)
    WHERE res.type = 'llm.response'
)
SELECT req.job_id,
       req.step,
       q.provider,
       q.model,
       req.ts                                       AS started,
       res.duration_s,
       res.tokens_in,
       res.tokens_out,
       res.success::integer                         AS success,
       res.status,
       res.error,
       res.error_class,
       q.cache_key,
       q.attempt,
       res.cost,
       res.ts                                       AS finished,
       q.kind,
       res.model                                    AS response_model,
       q.prompt_tokens,
       q.prompt_sha256,
       res.response_sha256,
       res.finish_reason,
       q.tokens_reserved,
       q.cost_reserved,
       req.version,
       req.seq,
       coalesce((req.version < req.forked_at)::integer, 0) AS copied
FROM llm AS req
CROSS JOIN LATERAL json_to_record(steplog_data(req.data)) AS q (
    provider text, model text, kind text, prompt_tokens bigint, attempt bigint, cache_key text,
    prompt_sha256 text, tokens_reserved bigint, cost_reserved double precision)
LEFT JOIN responses AS res
       ON res.seq = req.next_seq
      AND res.attempt = q.attempt
      AND res.cache_key = q.cache_key
WHERE req.type = 'llm.request';

-- One row per run of a step: each step.started with the step.succeeded / step.failed that
-- ended it, and each step.skipped (a resume reusing an earlier result). A run with no end is
-- 'interrupted' once the step started again or the job moved on (resumed, ended, or forked: a
-- fork's copied history stops at its point), else 'running'.
CREATE VIEW step_runs AS
WITH marks AS (
    SELECT seq, job_id, version, ts, type, step, data,
           CASE WHEN lead(step) OVER by_step = step THEN lead(seq) OVER by_step END AS next_seq,
           CASE WHEN lead(step) OVER by_step = step THEN lead(version) OVER by_step END
               AS next_version,
           max(CASE WHEN type = 'job.forked' THEN version END) OVER whole_job AS forked_at
    FROM events
    WHERE type IN ('step.started', 'step.succeeded', 'step.failed', 'step.skipped', 'job.forked')
    WINDOW by_step AS (PARTITION BY job_id ORDER BY step COLLATE "C", version),
           whole_job AS (by_step ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
),
ends AS (
    SELECT e.seq, e.ts, e.type, r.*
    FROM events AS e,
         json_to_record(steplog_data(e.data)) AS r (
             duration_s double precision, cache_hit boolean, error text, error_type text,
             cache_key text)
    WHERE e.type IN ('step.succeeded', 'step.failed')
)
SELECT s.job_id,
       s.step,
       m.attempt,
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
       CASE WHEN s.type = 'step.skipped' THEN 0.0::double precision ELSE e.duration_s END
           AS duration_s,
       CASE
           WHEN s.type = 'step.skipped' THEN NULL
           WHEN e.type = 'step.succeeded' THEN e.cache_hit::integer
           ELSE EXISTS (
               SELECT 1 FROM events AS h
               WHERE h.type = 'cache.hit' AND h.job_id = s.job_id AND h.step = s.step
                 -- SQLite: h.seq < next_seq; the same events (a job's seqs rise with its
                 -- versions), bounded on the (job_id, version) index rather than on the
                 -- cache index's (step, …, seq), which holds every job's runs of the step
                 AND h.version > s.version
                 AND h.version < coalesce(s.next_version, 9223372036854775807)
           )::integer
       END AS cache_hit,
       e.error,
       e.error_type,
       e.cache_key,
       m.reason AS skip_reason,
       s.version,
       s.seq,
       coalesce((s.version < s.forked_at)::integer, 0) AS copied
FROM marks AS s
CROSS JOIN LATERAL json_to_record(steplog_data(s.data)) AS m (attempt bigint, reason text)
LEFT JOIN ends AS e ON e.seq = s.next_seq
WHERE s.type IN ('step.started', 'step.skipped');

-- One row per file.written: every file a step put in the workspace, or found already identical.
CREATE VIEW file_writes AS
WITH w AS (
    SELECT seq, job_id, version, ts, type, step, data,
           max(CASE WHEN type = 'job.forked' THEN version END) OVER (PARTITION BY job_id)
               AS forked_at
    FROM events
    WHERE type IN ('file.written', 'job.forked')
)
SELECT w.job_id,
       w.step,
       f.path,
       f.sha256,
       f.wrote::integer AS wrote,
       f.reason,
       w.ts,
       f.size,
       w.version,
       w.seq,
       coalesce((w.version < w.forked_at)::integer, 0) AS copied
FROM w
CROSS JOIN LATERAL json_to_record(steplog_data(w.data)) AS f (
    path text, sha256 text, wrote boolean, reason text, size bigint)
WHERE w.type = 'file.written';

-- Cache lookups per provider and model across all jobs. A hit carries no provider, so it is
-- attributed through its cache key to the llm.request that paid for the answer. A fork's copied
-- history (its events before job.forked) looked nothing up, so it is not counted again.
CREATE VIEW cache_stats AS
WITH forks AS (  -- where each fork's copied history ends
    SELECT job_id, max(version) AS forked_at FROM events WHERE type = 'job.forked' GROUP BY job_id
),
lookups AS (
    SELECT l.type, d.cache_key, coalesce(d.tokens_saved, 0) AS tokens_saved
    FROM events AS l
    LEFT JOIN forks AS f ON f.job_id = l.job_id
    CROSS JOIN LATERAL json_to_record(steplog_data(l.data)) AS d (
        cache_key text, tokens_saved bigint)
    WHERE l.type IN ('cache.hit', 'cache.miss') AND NOT coalesce(l.version < f.forked_at, false)
),
keys AS (  -- min() as SQLite's, by bytes
    SELECT d.cache_key, min(d.provider COLLATE "C") AS provider, min(d.model COLLATE "C") AS model
    FROM events AS r
    CROSS JOIN LATERAL json_to_record(steplog_data(r.data)) AS d (
        cache_key text, provider text, model text)
    WHERE r.type = 'llm.request'
    GROUP BY d.cache_key
)
SELECT k.provider,
       k.model,
       count(*) FILTER (WHERE l.type = 'cache.hit')  AS hits,
       count(*) FILTER (WHERE l.type = 'cache.miss') AS misses,
       sum(l.tokens_saved)::bigint                    AS tokens_saved,
       count(*)                                       AS lookups,
       round((count(*) FILTER (WHERE l.type = 'cache.hit'))::numeric / count(*), 4)
           ::double precision                         AS hit_rate
FROM lookups AS l
LEFT JOIN keys AS k ON k.cache_key = l.cache_key
GROUP BY k.provider, k.model;

-- One row per job: the `jobs` projection with totals folded from the job's events.
-- calls are the requests made; answered + failed + unanswered of them, as the manifest counts.
-- steps_succeeded / steps_failed count each step by its latest outcome (skipped = succeeded
-- earlier), so a step that failed and then succeeded on resume counts once, as succeeded.
-- `WHERE job_id = $1` reaches the per-job aggregate (job_id is its grouping key, and the joins
-- carry the condition to jobs and streams) and so the (job_id, version) index.
CREATE VIEW job_summary AS
WITH per_job AS (
    SELECT e.job_id,
           min(e.version) FILTER (WHERE e.type IN ('job.started', 'job.resumed')) AS first_start,
           -- job.forked reopens a copied history that had ended, as in the manifest
           max(e.version) FILTER (WHERE e.type IN ('job.started', 'job.resumed', 'job.forked'))
               AS last_start,
           max(e.version) FILTER (WHERE e.type IN ('job.succeeded', 'job.failed', 'job.cancelled',
                                                   'job.interrupted')) AS last_end,
           count(*) FILTER (WHERE e.type = 'llm.request') AS calls,
           count(*) FILTER (WHERE e.type = 'llm.response' AND d.success) AS answered_calls,
           count(*) FILTER (WHERE e.type = 'llm.response' AND NOT d.success) AS failed_calls,
           sum(d.tokens_in) FILTER (WHERE e.type = 'llm.response') AS tokens_in,
           sum(d.tokens_out) FILTER (WHERE e.type = 'llm.response') AS tokens_out,
           sum(d.cost ORDER BY e.version) FILTER (WHERE e.type = 'llm.response') AS cost,
           count(*) FILTER (WHERE e.type = 'cache.hit') AS cache_hits,
           count(*) FILTER (WHERE e.type = 'cache.miss') AS cache_misses,
           sum(d.tokens_saved) FILTER (WHERE e.type = 'cache.hit') AS tokens_saved
    FROM events AS e
    CROSS JOIN LATERAL json_to_record(  -- one row of NULLs for the events without figures
        CASE WHEN e.type IN ('llm.response', 'cache.hit') THEN steplog_data(e.data) END
    ) AS d (success boolean, tokens_in bigint, tokens_out bigint, cost double precision,
            tokens_saved bigint)
    WHERE e.type IN ('job.created', 'job.started', 'job.resumed', 'job.succeeded', 'job.failed',
                     'job.cancelled', 'job.interrupted', 'job.forked', 'llm.request',
                     'llm.response', 'cache.hit', 'cache.miss')
    GROUP BY e.job_id
),
bounds AS (  -- timestamps by position (version), not by comparing ts strings
    SELECT p.*,
           opened.ts AS started,
           ended.ts AS finished,
           o.succeeded AS steps_succeeded,
           o.failed AS steps_failed
    FROM per_job AS p
    -- joins rather than SQLite's scalar subqueries: each is read once, though used twice
    LEFT JOIN events AS opened ON opened.job_id = p.job_id AND opened.version = p.first_start
    LEFT JOIN events AS ended
           ON ended.job_id = p.job_id AND ended.version = p.last_end AND p.last_end > p.last_start
    CROSS JOIN LATERAL (  -- each step's latest outcome, counted
        SELECT count(*) FILTER (WHERE latest.type IN ('step.succeeded', 'step.skipped'))
                   AS succeeded,
               count(*) FILTER (WHERE latest.type = 'step.failed') AS failed
        FROM (
            SELECT DISTINCT ON (o.step) o.type
            FROM events AS o
            WHERE o.type IN ('step.started', 'step.succeeded', 'step.failed', 'step.skipped')
              AND o.job_id = p.job_id
            ORDER BY o.step, o.version DESC
        ) AS latest
    ) AS o
)
SELECT b.job_id,
       j.pipeline,
       j.status,
       b.started,
       b.finished,
       -- SQLite: round((julianday(finished or last event) - julianday(started)) * 86400, 6)
       steplog_round((steplog_julianday(coalesce(b.finished, s.updated_ts))
                      - steplog_julianday(b.started)) * 86400, 6) AS duration_s,
       (SELECT count(*) FROM events AS c, json_object_keys(steplog_data(c.data) -> 'steps')
        WHERE c.type = 'job.created' AND c.job_id = b.job_id) AS steps,
       b.steps_succeeded,
       b.steps_failed,
       coalesce(b.tokens_in, 0)::bigint    AS tokens_in,
       coalesce(b.tokens_out, 0)::bigint   AS tokens_out,
       b.cost,
       b.calls,
       b.answered_calls,
       b.failed_calls,
       -- requests no response answered (llm_calls' success IS NULL): in flight, or abandoned
       (SELECT count(*) FROM llm_calls AS c WHERE c.job_id = b.job_id AND c.success IS NULL)
                                           AS unanswered_calls,
       -- held against the budget by the calls in flight of the run under way (0 once it ends)
       CASE WHEN j.status = 'running' THEN
           (SELECT coalesce(sum(c.tokens_reserved), 0)::bigint FROM llm_calls AS c
            WHERE c.job_id = b.job_id AND c.success IS NULL AND c.version > b.last_start)
       ELSE 0 END                          AS tokens_reserved,
       CASE WHEN j.status = 'running' THEN
           (SELECT steplog_round(coalesce(sum(c.cost_reserved), 0), 9) FROM llm_calls AS c
            WHERE c.job_id = b.job_id AND c.success IS NULL AND c.version > b.last_start)
       ELSE 0.0::double precision END      AS cost_reserved,
       b.cache_hits,
       b.cache_misses,
       coalesce(b.tokens_saved, 0)::bigint AS tokens_saved,
       j.created_ts                        AS created
FROM bounds AS b
JOIN jobs AS j ON j.job_id = b.job_id
JOIN streams AS s ON s.job_id = b.job_id;
