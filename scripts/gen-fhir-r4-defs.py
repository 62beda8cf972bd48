#!/usr/bin/env python3
"""Regenerate crates/fhir/data/ from the FHIR R4 specification's own resources.

The data comes from the npm package `hl7.fhir.r4.examples` 4.0.1 (HL7 FHIR R4,
licensed CC0): `Bundle-searchParams.json` (every R4 SearchParameter) and
`CompartmentDefinition-patient.json`. We keep only what fhirgate needs, per
resource type, so that nothing is typed by hand.

Usage: scripts/gen-fhir-r4-defs.py   (runs `npm pack` into a temp dir)
"""
import json
import os
import subprocess
import sys
import tarfile
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "crates", "fhir", "data")


def member(tar, name):
    return json.load(tar.extractfile("package/" + name))


def split_expression(expr, base):
    """R4 shares one SearchParameter among several bases with `A.x | B.y`; keep `base`'s part."""
    if expr is None:
        return None
    parts = [p.strip() for p in expr.split("|")]
    mine = [p for p in parts if p.startswith(base + ".") or p.startswith("(" + base + ".") or p == base]
    if not mine:
        # expressions that do not name their base (rare) apply as written
        mine = parts
    return " | ".join(mine)


def main():
    tmp = tempfile.mkdtemp()
    tgz = sys.argv[1] if len(sys.argv) > 1 else None
    if tgz is None:
        subprocess.run(["npm", "pack", "hl7.fhir.r4.examples@4.0.1", "--pack-destination", tmp],
                       check=True, stdout=subprocess.DEVNULL)
        tgz = os.path.join(tmp, "hl7.fhir.r4.examples-4.0.1.tgz")
    with tarfile.open(tgz) as tar:
        bundle = member(tar, "Bundle-searchParams.json")
        compartment = member(tar, "CompartmentDefinition-patient.json")

    params = {}
    for entry in bundle["entry"]:
        sp = entry["resource"]
        for base in sp.get("base", []):
            params.setdefault(base, {})[sp["code"]] = {
                "type": sp["type"],
                "expression": split_expression(sp.get("expression"), base),
                "target": sorted(sp.get("target", [])),
                "url": sp["url"],
                **({"component": True} if sp.get("component") else {}),
            }
    out = {
        "source": "hl7.fhir.r4.examples 4.0.1, Bundle-searchParams.json (HL7 FHIR R4, CC0)",
        "resources": {k: dict(sorted(v.items())) for k, v in sorted(params.items())},
    }
    with open(os.path.join(OUT, "r4-search-parameters.json"), "w") as f:
        json.dump(out, f, indent=0, sort_keys=False)
        f.write("\n")

    comp = {}
    for r in compartment["resource"]:
        if r.get("param"):
            comp[r["code"]] = r["param"]
    with open(os.path.join(OUT, "r4-patient-compartment.json"), "w") as f:
        json.dump({
            "source": "hl7.fhir.r4.examples 4.0.1, CompartmentDefinition-patient.json (HL7 FHIR R4, CC0)",
            "resources": dict(sorted(comp.items())),
        }, f, indent=0)
        f.write("\n")


if __name__ == "__main__":
    main()
