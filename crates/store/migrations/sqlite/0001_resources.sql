-- Current version of every resource (deleted ones too, so that reads can answer 410 Gone).
-- The body lives only in resource_history, written once per version.
CREATE TABLE resource (
    resource_type TEXT NOT NULL,
    id            TEXT NOT NULL,
    version_id    INTEGER NOT NULL,
    last_updated  TEXT NOT NULL,
    lu            INTEGER NOT NULL, -- last_updated in microseconds since the epoch, for _lastUpdated
    deleted       BOOLEAN NOT NULL,
    PRIMARY KEY (resource_type, id)
);
CREATE INDEX resource_lu ON resource (resource_type, lu);

-- Every version ever written, the current one included; a deletion is a version with no body.
CREATE TABLE resource_history (
    resource_type TEXT NOT NULL,
    id            TEXT NOT NULL,
    version_id    INTEGER NOT NULL,
    last_updated  TEXT NOT NULL,
    deleted       BOOLEAN NOT NULL,
    body          TEXT,
    PRIMARY KEY (resource_type, id, version_id)
);

-- Search indexes: one row per extracted value, rewritten with each version. Each table is
-- clustered on its lookup key (WITHOUT ROWID), which saves one B-tree per row written;
-- rows are unique because extraction deduplicates them.
CREATE TABLE search_token (
    resource_type TEXT NOT NULL,
    id            TEXT NOT NULL,
    param         TEXT NOT NULL,
    system        TEXT NOT NULL, -- '' when the value has no system
    code          TEXT NOT NULL,
    PRIMARY KEY (resource_type, param, code, system, id)
) WITHOUT ROWID;
CREATE INDEX search_token_res ON search_token (resource_type, id, param);

CREATE TABLE search_string (
    resource_type TEXT NOT NULL,
    id            TEXT NOT NULL,
    param         TEXT NOT NULL,
    value         TEXT NOT NULL, -- lowercase, accents removed
    raw           TEXT NOT NULL, -- as written, for :exact
    PRIMARY KEY (resource_type, param, value, raw, id)
) WITHOUT ROWID;
CREATE INDEX search_string_res ON search_string (resource_type, id, param);

CREATE TABLE search_reference (
    resource_type TEXT NOT NULL,
    id            TEXT NOT NULL,
    param         TEXT NOT NULL,
    ref_type      TEXT NOT NULL, -- '' when the reference names no type (urn:uuid:…, canonical)
    ref_id        TEXT NOT NULL,
    ref_url       TEXT NOT NULL, -- the reference as written
    -- Also serves _revinclude and the patient compartment (target type and id by source type).
    PRIMARY KEY (resource_type, param, ref_id, ref_type, ref_url, id)
) WITHOUT ROWID;
CREATE INDEX search_reference_res ON search_reference (resource_type, id, param);

CREATE TABLE search_date (
    resource_type TEXT NOT NULL,
    id            TEXT NOT NULL,
    param         TEXT NOT NULL,
    lo            INTEGER NOT NULL, -- [lo, hi) in microseconds since the epoch
    hi            INTEGER NOT NULL,
    PRIMARY KEY (resource_type, param, lo, hi, id)
) WITHOUT ROWID;
CREATE INDEX search_date_res ON search_date (resource_type, id, param);
