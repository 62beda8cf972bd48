-- US Core 6.1 and 7.0 define search parameters R4 lacks (crates/fhir/data/us-core.json):
-- Patient race, ethnicity and gender-identity, Condition asserted-date, Encounter
-- discharge-disposition, CareTeam role, Goal description. Index the resources of those types
-- stored before (the next open rebuilds their index rows from their current versions).
INSERT INTO search_reindex (resource_type) VALUES
    ('CareTeam'), ('Condition'), ('Encounter'), ('Goal'), ('Patient')
ON CONFLICT DO NOTHING;
