#!/usr/bin/env python3
"""Write tests/us-core/<version>/: what Inferno's US Core test kit checks of a server's Single
Patient API, and US Core's own example data to check it on, for US Core 6.1.0 and 7.0.0.

- `kit.json`: per profile, facts from the kit's generated metadata
  (`lib/us_core_test_kit/generated/v<version>/*/metadata.yml` of
  https://github.com/inferno-framework/us-core-test-kit, Apache-2.0): the resource type, the
  profile, the searches (parameter combinations and their SHALL/SHOULD), each parameter's
  element paths, element type, required comparators and fixed values, the includes and
  revincludes. No code of the kit: crates/fhirgate/tests/us_core_kit.rs runs the checks.
- `examples.ndjson`: the example resources of the US Core IG at the same tag
  (`input/examples/*.json` of https://github.com/HL7/US-Core, CC0-1.0), one per line, Bundles
  unpacked into their entries, sorted by type and id.

Not run in CI (CI cannot reach GitHub). Usage, with both repositories cloned (bare is fine):

    scripts/gen-us-core-kit-checks.py --kit us-core-test-kit.git --us-core US-Core.git
"""
import argparse
import json
import os
import subprocess
import sys

import yaml

VERSIONS = ["6.1.0", "7.0.0"]
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "us-core")
R4 = json.load(open(os.path.join(HERE, "..", "crates", "fhir", "data", "r4-search-parameters.json")))["resources"]


def git(repo, *args):
    return subprocess.run(["git", "-C", repo, *args], check=True, capture_output=True, text=True).stdout


def kit_facts(kit, commit, version):
    folder = f"lib/us_core_test_kit/generated/v{version}"
    groups = []
    for path in sorted(git(kit, "ls-tree", "-r", "--name-only", commit, folder).split()):
        if not path.endswith("/metadata.yml") or path.count("/") != 5:
            continue
        m = yaml.safe_load(git(kit, "show", f"{commit}:{path}"))
        definitions = {}
        for name, d in (m.get(":search_definitions") or {}).items():
            definitions[name.lstrip(":")] = {
                "paths": d.get(":paths") or [],
                "type": d.get(":type"),
                "comparators": sorted(c.lstrip(":") for c, e in (d.get(":comparators") or {}).items() if e == "SHALL"),
                "values": [str(v) for v in d.get(":values") or []],
                "multiple_or": d.get(":multiple_or"),
                "contains_multiple": bool(d.get(":contains_multiple")),
            }
        groups.append({
            "name": m[":name"],
            "folder": path.split("/")[-2],
            "resource": m[":resource"],
            "profile": m[":profile_url"],
            "delayed": bool(m.get(":is_delayed")),
            "interactions": {i[":code"]: i[":expectation"] for i in m.get(":interactions") or []},
            "searches": [{"names": s[":names"], "expectation": s[":expectation"]} for s in m.get(":searches") or []],
            "definitions": definitions,
            "includes": m.get(":include_params") or [],
            "revincludes": m.get(":revincludes") or [],
        })
    return groups


def examples(repo, tag):
    out = {}
    for path in git(repo, "ls-tree", "-r", "--name-only", tag, "input/examples").split():
        if not path.endswith(".json") or path.count("/") != 2:
            continue
        try:
            r = json.loads(git(repo, "show", f"{tag}:{path}"))
        except json.JSONDecodeError as e:
            print(f"{tag}:{path}: {e}", file=sys.stderr)
            continue
        items = [e["resource"] for e in r.get("entry", []) if "resource" in e] if r.get("resourceType") == "Bundle" else [r]
        for item in items:
            t, i = item.get("resourceType"), item.get("id")
            if t not in R4 or not i:
                continue
            out[(t, i)] = item
    return [out[k] for k in sorted(out)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kit", required=True, help="a clone of inferno-framework/us-core-test-kit")
    ap.add_argument("--kit-commit", default="HEAD")
    ap.add_argument("--us-core", required=True, help="a clone of HL7/US-Core (tags 6.1.0, 7.0.0)")
    a = ap.parse_args()
    commit = git(a.kit, "rev-parse", a.kit_commit).strip()
    for v in VERSIONS:
        d = os.path.join(OUT, v)
        os.makedirs(d, exist_ok=True)
        facts = {
            "source": f"inferno-framework/us-core-test-kit {commit} lib/us_core_test_kit/generated/v{v}/*/metadata.yml (Apache-2.0), via scripts/gen-us-core-kit-checks.py",
            "version": v,
            "groups": kit_facts(a.kit, commit, v),
        }
        with open(os.path.join(d, "kit.json"), "w") as f:
            json.dump(facts, f, indent=1, sort_keys=True)
            f.write("\n")
        rows = examples(a.us_core, v)
        with open(os.path.join(d, "examples.ndjson"), "w") as f:
            for r in rows:
                f.write(json.dumps(r, separators=(",", ":"), sort_keys=True) + "\n")
        print(f"{v}: {len(facts['groups'])} profiles, {len(rows)} example resources", file=sys.stderr)


if __name__ == "__main__":
    main()
