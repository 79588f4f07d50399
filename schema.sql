-- steplog schema, version 1.
--
-- The single definition of the database. Applied at open (one transaction) to an empty file;
-- the schema version lives in PRAGMA user_version and in steplog_meta, set by the code that
-- applies this file, and PRAGMA application_id marks the file as steplog's.
--
-- `events` is the source of truth. Everything else is either content (`blobs`, immutable) or a
-- projection kept in the same transaction as the append (`jobs`, `cache_index`) that can be
-- dropped and rebuilt from `events` at any time.

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
CREATE TABLE IF NOT EXISTS jobs (
    job_id     TEXT PRIMARY KEY,
    pipeline   TEXT,
    status     TEXT    NOT NULL,
    created_ts TEXT    NOT NULL
) WITHOUT ROWID;

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
