#!/usr/bin/env python3
"""The conformance report: docs/conformance.md's rows (one per Inferno kit test, each naming the
fhirgate tests that check it) joined with what the test files printed ("test NAME ... ok").

A row passes when at least one of its tests ran and every one that ran passed; it fails when any
failed; it is "open" when the document says so and no test covers it, and "not run" when its
tests live in files this run did not run (a run against a deployment runs inferno_checks only).
"""
import argparse
import json
import re
import sys
from pathlib import Path

# The abbreviations docs/conformance.md uses for the test files of crates/fhirgate/tests/.
# AU: fhirgate-auth's unit tests, whose names carry their module path (assertion::tests::…).
FILES = {"IC": "inferno_checks", "OA": "oauth", "DI": "discovery", "FD": "fhir_data", "TL": "tls",
         "AU": "auth_unit"}
ROW_ID = re.compile(r"^[A-Z]\d+$")
TOKEN = re.compile(r"\b(IC|OA|DI|FD|TL|AU)\b|`([^`]+)`")
RESULT = re.compile(r"^test (\S+) \.\.\. (ok|FAILED|ignored)")


def read_logs(logs: Path):
    """{file: {test: "ok"|"FAILED"|"ignored"}} for every log present."""
    results = {}
    for log in sorted(logs.glob("*.log")):
        tests = {}
        for line in log.read_text(errors="replace").splitlines():
            m = RESULT.match(line)
            if m:
                # a unit test's module path is dropped: the document names the function
                tests[m.group(1).rsplit("::", 1)[-1]] = m.group(2)
        results[log.stem] = tests
    return results


def cells(line: str):
    return [c.strip() for c in line.strip().strip("|").split("|")]


def read_rows(doc: Path):
    """Every table row whose first cell is an id (D1, L4, G16, A3 …), under its section."""
    rows, section = [], ""
    for line in doc.read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
            continue
        if not line.startswith("|"):
            continue
        c = cells(line)
        if not c or not ROW_ID.match(c[0]):
            continue
        refs = []
        for cell in c[1:]:
            prefix = None
            for m in TOKEN.finditer(cell):
                if m.group(1):
                    prefix = m.group(1)
                elif prefix and re.fullmatch(r"[a-z_][a-z0-9_]*", m.group(2)):
                    refs.append((FILES[prefix], m.group(2)))
                else:
                    # another crate's unit tests (`fhirgate-auth` …) or a helper: not a test here
                    prefix = None if "-" in m.group(2) else prefix
        rows.append({
            "id": c[0],
            "section": section,
            "kit_test": c[1],
            "open": "**open**" in line.lower() or "open, by design" in line.lower(),
            "refs": refs,
        })
    return rows


def judge(row, results):
    ran, missing_files = [], set()
    for file, test in row["refs"]:
        if file not in results:
            missing_files.add(file)
            continue
        outcome = results[file].get(test)
        if outcome is not None:  # names that are helpers, not tests, have no outcome
            ran.append((file, test, outcome))
    if any(o == "FAILED" for _, _, o in ran):
        state = "FAIL"
    elif row["open"]:
        state = "open"  # what is built passes; the document says what is not
    elif any(o == "ok" for _, _, o in ran):
        state = "pass"
    elif missing_files:
        state = "not run"
    else:
        state = "no test"
    return state, ran, sorted(missing_files)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--doc", type=Path, required=True)
    ap.add_argument("--logs", type=Path, required=True)
    ap.add_argument("--target", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()

    results = read_logs(a.logs)
    if not results:
        print("report: no test logs in", a.logs, file=sys.stderr)
        return 1
    rows = read_rows(a.doc)
    if not rows:
        print("report: no rows in", a.doc, file=sys.stderr)
        return 1

    mapped = set()
    judged = []
    for row in rows:
        state, ran, missing = judge(row, results)
        mapped.update((f, t) for f, t, _ in ran)
        judged.append({**row, "state": state, "ran": ran, "missing_files": missing})

    counts = {}
    for r in judged:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    failed_tests = [(f, t) for f, tests in results.items() for t, o in tests.items() if o == "FAILED"]
    unmapped = sorted((f, t) for f, tests in results.items() for t in tests if (f, t) not in mapped)

    mark = {"pass": "✅ pass", "FAIL": "❌ FAIL", "open": "⚪ open", "not run": "➖ not run", "no test": "⚠️ no test"}
    out = [
        "# fhirgate conformance report",
        "",
        f"Target: {a.target}",
        "",
        "Each row is a server-side check of the Inferno SMART App Launch (STU1, STU2, STU2.2) or ONC "
        "(g)(10) test kit, or a (g)(10) attestation with a server side, as docs/conformance.md "
        "describes it; the tests are fhirgate's own (crates/fhirgate/tests/), run just now.",
        "",
        "| result | rows |",
        "|---|---|",
    ]
    for state in ["pass", "FAIL", "open", "not run", "no test"]:
        if counts.get(state):
            out.append(f"| {mark[state]} | {counts[state]} |")
    out.append(f"| test functions run | {sum(len(t) for t in results.values())} in {', '.join(sorted(results))} |")
    out.append("")
    section = None
    for r in judged:
        if r["section"] != section:
            section = r["section"]
            out += ["", f"## {section}", "", "| # | kit test | result | tests run |", "|---|---|---|---|"]
        tests = ", ".join(f"{f}::{t}{'' if o == 'ok' else ' (' + o + ')'}" for f, t, o in r["ran"])
        if r["missing_files"]:
            tests += (" — " if tests else "") + "not run here: " + ", ".join(r["missing_files"])
        kit = r["kit_test"].replace("|", "\\|")
        out.append(f"| {r['id']} | {kit} | {mark[r['state']]} | {tests or '—'} |")
    if failed_tests:
        out += ["", "## Failed tests", ""] + [f"- {f}::{t}" for f, t in failed_tests]
    if unmapped:
        out += ["", "## Also run (not mapped to a kit test)", "",
                ", ".join(f"{f}::{t}" for f, t in unmapped)]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(out) + "\n")
    if a.json:
        a.json.write_text(json.dumps({"target": a.target, "counts": counts, "rows": [
            {k: r[k] for k in ("id", "section", "kit_test", "state", "missing_files")}
            | {"tests": [{"file": f, "test": t, "outcome": o} for f, t, o in r["ran"]]}
            for r in judged]}, indent=2) + "\n")
    print(f"report: {counts}; {len(failed_tests)} failed test(s)")
    return 1 if counts.get("FAIL") or failed_tests else 0


if __name__ == "__main__":
    sys.exit(main())
