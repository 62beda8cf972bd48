-- Bulk Data `$export` jobs (issue 13): one row per kick-off, owned by (FHIR base, client, user).
-- Times are seconds since the epoch; `params` and `manifest` are JSON text.
CREATE TABLE export_job (
    id               TEXT PRIMARY KEY,
    base             TEXT NOT NULL,   -- the FHIR base URL the kick-off was sent to
    client           TEXT NOT NULL,   -- client_id of the token that started it
    user_id          TEXT,            -- the token's User; NULL for a backend service
    request          TEXT NOT NULL,   -- the kick-off request URL, as the manifest repeats it
    params           TEXT NOT NULL,   -- the validated kick-off parameters (JSON)
    status           TEXT NOT NULL,   -- queued, running, completed, failed, cancelled
    progress         TEXT,            -- what X-Progress says while it runs
    transaction_time TEXT NOT NULL,   -- FHIR instant: the export reflects the data as of then
    error            TEXT,            -- why it failed
    manifest         TEXT,            -- the completion manifest (JSON), once completed
    lease_owner      TEXT,            -- the process running it
    heartbeat        BIGINT,          -- when that process last said it is alive
    created          BIGINT NOT NULL,
    updated          BIGINT NOT NULL,
    expires          BIGINT           -- when a finished job and its files are removed
);
CREATE INDEX export_job_status ON export_job (status, heartbeat);

-- Output files kept in the database (PostgreSQL, or an SQLite store without a data folder):
-- each file is a run of NDJSON chunks in `seq` order, each chunk whole lines.
CREATE TABLE export_output (
    job   TEXT NOT NULL,
    file  TEXT NOT NULL,
    seq   BIGINT NOT NULL,
    data  TEXT NOT NULL,
    PRIMARY KEY (job, file, seq)
);
