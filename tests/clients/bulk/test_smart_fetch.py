"""SMART Fetch (PyPI `smart-fetch`, the Cumulus project's bulk exporter) completes a Group-level
Bulk Data export against `fhirgate serve`: SMART Backend Services with `private_key_jwt` (RS384)
for a `client_credentials` token, the CapabilityStatement read, the kick-off with its own `_type`
list and `_typeFilter`s, status polling and the NDJSON downloads. The files hold exactly the
Group's members' records: nothing of the patient outside the Group."""

import json
import os
import subprocess
import tempfile
from pathlib import Path

from harness import Fhirgate
from jwcrypto import jwk

SMART_FETCH = os.environ.get("SMART_FETCH", "smart-fetch")


def observation(oid, patient, category):
    return {"resourceType": "Observation", "id": oid, "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": category}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": f"Patient/{patient}"}}


def test_smart_fetch_exports_a_group():
    server = Fhirgate().start()
    try:
        key = jwk.JWK.generate(kty="RSA", size=2048, kid="smart-fetch-k1", alg="RS384", use="sig")
        public = json.loads(key.export_public())
        public.update(alg="RS384", use="sig")
        private = json.loads(key.export_private())
        private.update(alg="RS384", key_ops=["sign"])
        server.seed([
            {"resourceType": "Patient", "id": "bulk-a", "name": [{"family": "Alpha"}]},
            {"resourceType": "Patient", "id": "bulk-b", "name": [{"family": "Beta"}]},
            {"resourceType": "Patient", "id": "bulk-outside", "name": [{"family": "Outside"}]},
            observation("bulk-obs-a", "bulk-a", "vital-signs"),
            observation("bulk-obs-b", "bulk-b", "laboratory"),
            observation("bulk-obs-outside", "bulk-outside", "laboratory"),
            {"resourceType": "Group", "id": "bulk-group", "type": "person", "actual": True,
             "member": [{"entity": {"reference": "Patient/bulk-a"}},
                        {"entity": {"reference": "Patient/bulk-b"}}]},
            {"resourceType": "Client", "id": "smart-fetch", "grant_types": ["client_credentials"],
             "jwks": {"keys": [public]}, "scope": ["system/*.rs", "system/*.read"]},
            {"resourceType": "AccessPolicy", "id": "smart-fetch-bulk", "engine": "matcho",
             "link": [{"id": "smart-fetch", "resourceType": "Client"}],
             "matcho": {"jwt": {"sub": "smart-fetch", "scope": "#system/"}}},
        ])
        with tempfile.TemporaryDirectory(prefix="smart-fetch-") as tmp:
            key_file = Path(tmp) / "private.jwks"
            key_file.write_text(json.dumps({"keys": [private]}))
            out = Path(tmp) / "out"
            run = subprocess.run(
                [SMART_FETCH, "bulk", "--fhir-url", server.fhir,
                 "--smart-client-id", "smart-fetch", "--smart-key", str(key_file),
                 "--group", "bulk-group", "--no-compression", str(out)],
                capture_output=True, text=True, timeout=300,
            )
            assert run.returncode == 0, run.stdout + run.stderr

            def ids(resource_type):
                found = set()
                for f in out.glob(f"{resource_type}.*.ndjson"):
                    for line in f.read_text().splitlines():
                        r = json.loads(line)
                        assert r["resourceType"] == resource_type
                        found.add(r["id"])
                return found

            assert ids("Patient") == {"bulk-a", "bulk-b"}
            assert ids("Observation") == {"bulk-obs-a", "bulk-obs-b"}
    finally:
        server.stop()
