-- steplog schema for PostgreSQL, version 1.
--
-- The single definition of the PostgreSQL store's tables (steplog.eventstore.postgres), the
-- counterpart of schema.sql with the same table and column names. Applied at open, in one
-- transaction, to a database whose current schema (the first one on search_path, `public` by
-- default) holds no table yet; the code that applies it records the version in steplog_meta
-- and schema_migrations in that same transaction. Its version count is its own (this file
-- starts at 1; schema.sql's is SQLite's).
--
-- Not here yet: the projection tables (jobs, cache_index, cache_refused, breakers) and the audit
-- views of schema.sql. They come with the projectors and views written in this dialect.
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
CREATE TABLE jobs (
    job_id     text PRIMARY KEY,
    pipeline   text,
    status     text NOT NULL,
    created_ts text NOT NULL
);

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

-- One row per schema change applied to this database: the version it created or upgraded to.
CREATE TABLE schema_migrations (
    version     integer PRIMARY KEY,
    ts          text    NOT NULL,              -- when it was applied, ISO 8601 UTC
    description text    NOT NULL
);
