-- Index rows and versions name their resource by an integer, `resource.rid`, instead of by
-- its text id.
--
-- Ids are often random (Synthea's and most servers' are UUIDs): keyed by them, every index
-- row a bulk load writes landed on a random page of each index, and a 1,000-resource batch
-- dirtied (and wrote to the WAL) some 15,000 pages. `rid` grows with each new resource, so the
-- per-resource index and each value's run of rows take new rows at their end, page after page.
--
-- `rid` is the rowid (INTEGER PRIMARY KEY: VACUUM keeps it); resource rows are never removed,
-- so a rid is never reused. The index tables are rebuilt empty and every type is queued for
-- reindexing, which the next open does from the current versions (no new versions).
CREATE TABLE resource_new (
    rid           INTEGER PRIMARY KEY,
    resource_type TEXT NOT NULL,
    id            TEXT NOT NULL,
    version_id    INTEGER NOT NULL,
    last_updated  TEXT NOT NULL,
    lu            INTEGER NOT NULL, -- last_updated in microseconds since the epoch, for _lastUpdated
    deleted       BOOLEAN NOT NULL,
    UNIQUE (resource_type, id)
);
INSERT INTO resource_new (resource_type, id, version_id, last_updated, lu, deleted)
    SELECT resource_type, id, version_id, last_updated, lu, deleted FROM resource ORDER BY rowid;
DROP TABLE resource;
ALTER TABLE resource_new RENAME TO resource;
CREATE INDEX resource_lu ON resource (resource_type, lu);

-- Versions by rid too: a new resource's versions go at the end of the table and its key.
CREATE TABLE resource_history_new (
    rid           INTEGER NOT NULL, -- resource.rid
    version_id    INTEGER NOT NULL,
    last_updated  TEXT NOT NULL,
    deleted       BOOLEAN NOT NULL,
    body          TEXT,
    PRIMARY KEY (rid, version_id)
);
INSERT INTO resource_history_new (rid, version_id, last_updated, deleted, body)
    SELECT r.rid, h.version_id, h.last_updated, h.deleted, h.body
    FROM resource_history h JOIN resource r ON r.resource_type = h.resource_type AND r.id = h.id
    ORDER BY r.rid, h.version_id;
DROP TABLE resource_history;
ALTER TABLE resource_history_new RENAME TO resource_history;

DROP TABLE search_token;
DROP TABLE search_string;
DROP TABLE search_reference;
DROP TABLE search_date;

-- One row per extracted value, rewritten with each version; clustered on the lookup key
-- (WITHOUT ROWID), and the `_res` index (rid, param) is covering, since it carries the key.
CREATE TABLE search_token (
    resource_type TEXT NOT NULL,
    rid           INTEGER NOT NULL, -- resource.rid
    param         TEXT NOT NULL,
    system        TEXT NOT NULL, -- '' when the value has no system
    code          TEXT NOT NULL,
    PRIMARY KEY (resource_type, param, code, system, rid)
) WITHOUT ROWID;
CREATE INDEX search_token_res ON search_token (rid, param);

CREATE TABLE search_string (
    resource_type TEXT NOT NULL,
    rid           INTEGER NOT NULL,
    param         TEXT NOT NULL,
    value         TEXT NOT NULL, -- lowercase, accents removed
    raw           TEXT NOT NULL, -- as written, for :exact
    PRIMARY KEY (resource_type, param, value, raw, rid)
) WITHOUT ROWID;
CREATE INDEX search_string_res ON search_string (rid, param);

CREATE TABLE search_reference (
    resource_type TEXT NOT NULL,
    rid           INTEGER NOT NULL,
    param         TEXT NOT NULL,
    ref_type      TEXT NOT NULL, -- '' when the reference names no type (urn:uuid:…, canonical)
    ref_id        TEXT NOT NULL,
    ref_url       TEXT NOT NULL, -- the reference as written
    -- Also serves _revinclude and the patient compartment (target type and id by source type).
    PRIMARY KEY (resource_type, param, ref_id, ref_type, ref_url, rid)
) WITHOUT ROWID;
CREATE INDEX search_reference_res ON search_reference (rid, param);

CREATE TABLE search_date (
    resource_type TEXT NOT NULL,
    rid           INTEGER NOT NULL,
    param         TEXT NOT NULL,
    lo            INTEGER NOT NULL, -- [lo, hi) in microseconds since the epoch
    hi            INTEGER NOT NULL,
    PRIMARY KEY (resource_type, param, lo, hi, rid)
) WITHOUT ROWID;
CREATE INDEX search_date_res ON search_date (rid, param);

INSERT INTO search_reindex (resource_type)
    SELECT DISTINCT resource_type FROM resource WHERE deleted = FALSE
    ON CONFLICT (resource_type) DO NOTHING;
