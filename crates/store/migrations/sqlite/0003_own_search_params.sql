-- Resource types whose search index rows predate their current search parameters. When the
-- store opens, it rebuilds the index rows of every live resource of each queued type from its
-- current version (writing no new version) and dequeues the type, in one transaction. A
-- migration that changes a type's search parameters queues the type here.
CREATE TABLE search_reindex (
    resource_type TEXT PRIMARY KEY
);

-- fhirgate's own types got search parameters of their own (src/own_params.rs): index the
-- Clients, Users, Roles and AccessPolicies written before.
INSERT INTO search_reindex (resource_type) VALUES ('AccessPolicy'), ('Client'), ('Role'), ('User');
