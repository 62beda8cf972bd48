#!/usr/bin/env python3
"""Write crates/fhir/data/us-core.json: the facts fhirgate needs from the US Core IG.

Reads the HL7 `US-Core` repository (https://github.com/HL7/US-Core, CC0-1.0) at its release
tags 6.1.0 and 7.0.0, through `git show TAG:path` (a bare clone works), and records:

- `searchParameters`: US Core's own SearchParameters that R4 has no parameter of that code for
  (e.g. Patient `race`, Condition `asserted-date`), with type, expression, targets and canonical
  URL. The rest of US Core's SearchParameters restate R4's and are served by R4's definitions.
- `versions`: per tag, the URL the server CapabilityStatement is known by, and per resource type
  its `supportedProfile` (versioned canonicals), `searchInclude` and `searchRevInclude`, as the
  IG's own `us-core-server` CapabilityStatement lists them.

Not run in CI (CI cannot reach GitHub). Usage:

    git clone --bare https://github.com/HL7/US-Core us-core.git
    scripts/gen-us-core-defs.py us-core.git > crates/fhir/data/us-core.json
"""
import json
import os
import subprocess
import sys

TAGS = ["6.1.0", "7.0.0"]
HERE = os.path.dirname(os.path.abspath(__file__))
R4 = json.load(open(os.path.join(HERE, "..", "crates", "fhir", "data", "r4-search-parameters.json")))["resources"]


def git(repo, *args):
    return subprocess.run(["git", "-C", repo, *args], check=True, capture_output=True, text=True).stdout


def resources_dir_files(repo, tag):
    return git(repo, "ls-tree", "-r", "--name-only", tag, "input/resources").split()


def load(repo, tag, path):
    return json.loads(git(repo, "show", f"{tag}:{path}"))


def in_r4(base, code):
    return any(code in R4.get(t, {}) for t in (base, "DomainResource", "Resource"))


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: gen-us-core-defs.py PATH-TO-US-CORE-GIT-REPOSITORY")
    repo = sys.argv[1]
    own = {}
    versions = {}
    for tag in TAGS:
        files = resources_dir_files(repo, tag)
        for f in files:
            name = os.path.basename(f).lower()
            if not (name.startswith("searchparameter-") and name.endswith(".json")):
                continue
            sp = load(repo, tag, f)
            for base in sp["base"]:
                if in_r4(base, sp["code"]):
                    continue
                entry = {
                    "type": sp["type"],
                    "expression": sp.get("expression"),
                    "target": sorted(sp.get("target", [])),
                    "url": sp["url"],
                }
                seen = own.setdefault(base, {}).get(sp["code"])
                if seen is not None and seen != entry:
                    # a later tag's wording wins; both evaluate to the same values here
                    print(f"{tag}: {base} {sp['code']} changed: {seen} -> {entry}", file=sys.stderr)
                own[base][sp["code"]] = entry
        cs_file = next(f for f in files if os.path.basename(f).lower() == "capabilitystatement-us-core-server.json")
        cs = load(repo, tag, cs_file)
        types = {}
        for r in cs["rest"][0]["resource"]:
            # the 6.1.0 tag lists unversioned canonicals: pin them to the tag
            profiles = [p if "|" in p else f"{p}|{tag}" for p in r.get("supportedProfile", [])]
            entry = {"supportedProfile": profiles}
            if r.get("searchInclude"):
                entry["searchInclude"] = r["searchInclude"]
            if r.get("searchRevInclude"):
                entry["searchRevInclude"] = r["searchRevInclude"]
            types[r["type"]] = entry
        versions[tag] = {
            "capabilityStatement": f"{cs['url']}|{tag}",
            "implementationGuide": f"http://hl7.org/fhir/us/core/ImplementationGuide/hl7.fhir.us.core|{tag}",
            "resources": types,
        }
    out = {
        "source": "HL7/US-Core tags " + ", ".join(TAGS) + " (input/resources; CC0-1.0), via scripts/gen-us-core-defs.py",
        "searchParameters": own,
        "versions": versions,
    }
    json.dump(out, sys.stdout, indent=1, sort_keys=True)
    print()


if __name__ == "__main__":
    main()
