-- Index rows and versions name their resource by an integer, `resource.rid`, instead of by
-- its text id.
--
-- Ids are often random (Synthea's and most servers' are UUIDs): keyed by them, every index
-- row a bulk load writes landed on a random page of each index. `rid` grows with each new
-- resource, so the per-resource indexes take new rows at their end. Resource rows (the
-- placeholders writers claim included) are never removed, so a rid is never reused. The index
-- tables are rebuilt empty and every type is queued for reindexing, which the next open does
-- from the current versions (no new versions).
ALTER TABLE resource ADD COLUMN rid BIGSERIAL;
CREATE UNIQUE INDEX resource_rid ON resource (rid);

-- Versions by rid too.
ALTER TABLE resource_history ADD COLUMN rid BIGINT;
UPDATE resource_history h SET rid = r.rid FROM resource r WHERE r.resource_type = h.resource_type AND r.id = h.id;
ALTER TABLE resource_history DROP CONSTRAINT resource_history_pkey;
ALTER TABLE resource_history DROP COLUMN resource_type, DROP COLUMN id;
ALTER TABLE resource_history ALTER COLUMN rid SET NOT NULL;
ALTER TABLE resource_history ADD PRIMARY KEY (rid, version_id);

DROP TABLE search_token;
DROP TABLE search_string;
DROP TABLE search_reference;
DROP TABLE search_date;

-- One row per extracted value, rewritten with each version. The value indexes end in rid, so
-- that a search's driving condition can be answered from the index alone.
CREATE TABLE search_token (
    resource_type TEXT NOT NULL,
    rid           BIGINT NOT NULL, -- resource.rid
    param         TEXT NOT NULL,
    system        TEXT NOT NULL, -- '' when the value has no system
    code          TEXT NOT NULL
);
CREATE INDEX search_token_code ON search_token (resource_type, param, code, system, rid);
CREATE INDEX search_token_res ON search_token (rid, param);

CREATE TABLE search_string (
    resource_type TEXT NOT NULL,
    rid           BIGINT NOT NULL,
    param         TEXT NOT NULL,
    value         TEXT COLLATE "C" NOT NULL, -- lowercase, accents removed
    raw           TEXT NOT NULL  -- as written, for :exact
);
CREATE INDEX search_string_value ON search_string (resource_type, param, value);
CREATE INDEX search_string_res ON search_string (rid, param);

CREATE TABLE search_reference (
    resource_type TEXT NOT NULL,
    rid           BIGINT NOT NULL,
    param         TEXT NOT NULL,
    ref_type      TEXT NOT NULL, -- '' when the reference names no type (urn:uuid:…, canonical)
    ref_id        TEXT NOT NULL,
    ref_url       TEXT NOT NULL  -- the reference as written
);
-- Also serves _revinclude and the patient compartment (target type and id within a source type).
CREATE INDEX search_reference_target ON search_reference (resource_type, param, ref_id, ref_type, rid);
CREATE INDEX search_reference_res ON search_reference (rid, param);

CREATE TABLE search_date (
    resource_type TEXT NOT NULL,
    rid           BIGINT NOT NULL,
    param         TEXT NOT NULL,
    lo            BIGINT NOT NULL, -- [lo, hi) in microseconds since the epoch
    hi            BIGINT NOT NULL
);
CREATE INDEX search_date_lo ON search_date (resource_type, param, lo, hi);
CREATE INDEX search_date_res ON search_date (rid, param);

INSERT INTO search_reindex (resource_type)
    SELECT DISTINCT resource_type FROM resource WHERE deleted = FALSE AND version_id > 0
    ON CONFLICT (resource_type) DO NOTHING;
