#!/usr/bin/env python3
"""The conformance report: docs/conformance.md's rows (one per Inferno kit test, each naming the
fhirgate tests that check it) joined with what the test files printed ("test NAME ... ok") and
with the tests that reported "not run" (the file FHIRGATE_NOT_RUN_FILE named during the run).

A row passes only when every test it names ran and passed. It fails when one failed, when a
name is neither a test nor a helper in the file it is said to be in ("no such test"), or when a
test its file defines did not run (absent from the log). It is "open" when the document says
so and nothing failed. It is "not run" when one of its tests reported "not run: reason" (a
missing prerequisite: Aidbox's sample files, curl, …), was ignored, or lives in a file this run
did not run (a run against a deployment runs inferno_checks only); with CI=true a "not run" row
is a failure too. Names of helpers (functions that are not tests, e.g. `assert_token_response`)
are allowed and skipped.

The US Core rows are not in the document: crates/fhirgate/tests/us_core_kit.rs lists one trial
per check of Inferno's US Core kit from the kit's own metadata (tests/us-core/*/kit.json), and
this report makes one row per US Core release and profile from the trials in its log. A trial
it ignored is a search the IG's examples give no values for, which the kit skips too: "skip",
never a failure.
"""
import argparse
import json
import os
import re
import sys
from pathlib import Path

# The abbreviations docs/conformance.md uses for the test files of crates/fhirgate/tests/.
# AU: fhirgate-auth's unit tests, whose names carry their module path (assertion::tests::…).
FILES = {"IC": "inferno_checks", "OA": "oauth", "DI": "discovery", "FD": "fhir_data", "TL": "tls",
         "EX": "export", "AU": "auth_unit", "UC": "us_core_kit", "AS": "app_state", "BR": "brands"}
# Where each file's tests and helpers are defined (relative to the repository), for telling a
# test that did not run or a misspelt name from a helper's name.
SOURCES = {
    "inferno_checks": ["crates/fhirgate/tests/inferno_checks.rs", "crates/fhirgate/tests/common"],
    "oauth": ["crates/fhirgate/tests/oauth.rs", "crates/fhirgate/tests/common"],
    "discovery": ["crates/fhirgate/tests/discovery.rs", "crates/fhirgate/tests/common"],
    "fhir_data": ["crates/fhirgate/tests/fhir_data.rs", "crates/fhirgate/tests/common"],
    "tls": ["crates/fhirgate/tests/tls.rs", "crates/fhirgate/tests/common"],
    "export": ["crates/fhirgate/tests/export.rs", "crates/fhirgate/tests/common"],
    "auth_unit": ["crates/auth/src"],
    "app_state": ["crates/fhirgate/tests/app_state.rs", "crates/fhirgate/tests/common"],
    "brands": ["crates/fhirgate/tests/brands.rs", "crates/fhirgate/tests/common"],
    # trials listed at run time, not test functions
    "us_core_kit": [],
}
US_CORE = "us_core_kit"
SKIPPED = "skipped: the IG's examples give no values for it (the kit skips it too)"
TRIAL = re.compile(r"^((?:pg_)?v\d+)_(.+?)_(read|search_.*|provenance_revinclude|include_.*|capability_statement)$")
TEST_FN = re.compile(r"#\[(?:tokio::)?test\b[^\]]*\]\s*(?:#\[[^\]]*\]\s*)*(?:pub\s+)?(?:async\s+)?fn\s+(\w+)")
ANY_FN = re.compile(r"\bfn\s+(\w+)")
ROW_ID = re.compile(r"^[A-Z]\d+$")
TOKEN = re.compile(r"\b(IC|OA|DI|FD|TL|EX|AU|AS|BR)\b|`([^`]+)`")
# libtest pads names in a column when it knows them all at once (libtest-mimic does)
RESULT = re.compile(r"^test (\S+)\s+\.\.\. (ok|FAILED|ignored)")


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


def read_sources(repo: Path):
    """{file: (test function names, every function name)} from the files' sources."""
    out = {}
    for file, paths in SOURCES.items():
        text = ""
        for p in paths:
            p = repo / p
            for f in sorted(p.rglob("*.rs")) if p.is_dir() else [p]:
                text += f.read_text(errors="replace") + "\n"
        out[file] = (set(TEST_FN.findall(text)), set(ANY_FN.findall(text)))
    return out


def read_not_run(path):
    """{(file, test): reason} from lines `crate/file::test: reason` (tests/common's not_run)."""
    out = {}
    if path is None or not path.exists():
        return out
    for line in path.read_text(errors="replace").splitlines():
        name, sep, reason = line.partition(": ")
        if not sep:
            continue
        file, sep, test = name.rsplit("/", 1)[-1].partition("::")
        if sep:
            out[(file, test.rsplit("::", 1)[-1])] = reason
    return out


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


def us_core_rows(results):
    """One row per US Core release and profile, from the us_core_kit trials that ran."""
    trials = results.get(US_CORE, {})
    groups = {}
    for name in sorted(trials):
        if name.endswith("_capability_statement"):
            key = (name.rsplit("_capability_statement", 1)[0],
                   "CapabilityStatement: instantiates, supportedProfile, SHALL searchParams")
        else:
            m = TRIAL.match(name)
            if not m:
                key = ("oracle", "the oracle's own date and token rules")
            else:
                key = (m.group(1), m.group(2))
        groups.setdefault(key, []).append(name)
    rows = []
    for i, ((tag, what), names) in enumerate(sorted(groups.items()), 1):
        backend = "PostgreSQL" if tag.startswith("pg_") else "SQLite"
        v = tag.removeprefix("pg_")
        version = f"{v[1]}.{v[2]}.{v[3:]}" if v.startswith("v") else ""
        rows.append({
            "id": f"U{i}",
            "section": f"US Core {version} Single Patient API, {backend} (trials from the kit's metadata)"
                       if version else "US Core: the oracle and the backends",
            "kit_test": what,
            "open": False,
            "refs": [(US_CORE, n) for n in names],
        })
    return rows


def judge(row, results, sources, not_run):
    """The row's state; the tests it names with their outcomes ("ok", "FAILED", "not run: …",
    "ignored", "did not run", "no such test"); the files of its tests this run did not run."""
    ran, missing_files = [], set()
    for file, test in row["refs"]:
        if file not in results:
            missing_files.add(file)
            continue
        tests, fns = sources.get(file, (set(), set()))
        outcome = results[file].get(test)
        if file == US_CORE and outcome == "ignored":
            outcome = SKIPPED
        if (file, test) in not_run:
            outcome = "not run: " + not_run[(file, test)]
        elif outcome is None:
            if test in tests:
                outcome = "did not run"  # its file ran, but the log has no result for it
            elif test in fns:
                continue  # a helper the document names, not a test
            else:
                outcome = "no such test"
        ran.append((file, test, outcome))
    outcomes = [o for _, _, o in ran]
    if any(o in ("FAILED", "did not run", "no such test") for o in outcomes):
        state = "FAIL"
    elif row["open"]:
        state = "open"  # what is built passes; the document says what is not
    elif not ran and not missing_files:
        state = "no test"
    elif outcomes and all(o == SKIPPED for o in outcomes):
        state = "skip"
    elif missing_files or any(o not in ("ok", SKIPPED) for o in outcomes):
        state = "not run"  # a "not run: reason", an ignored test, or a file not run here
    else:
        state = "pass"
    return state, ran, sorted(missing_files)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--doc", type=Path, required=True)
    ap.add_argument("--logs", type=Path, required=True)
    ap.add_argument("--target", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--not-run", type=Path, help="the run's FHIRGATE_NOT_RUN_FILE")
    ap.add_argument("--repo", type=Path, default=Path("."), help="where the test sources are")
    a = ap.parse_args()
    ci = os.environ.get("CI", "") not in ("", "false", "0")

    results = read_logs(a.logs)
    if not results:
        print("report: no test logs in", a.logs, file=sys.stderr)
        return 1
    rows = read_rows(a.doc)
    if not rows:
        print("report: no rows in", a.doc, file=sys.stderr)
        return 1
    rows += us_core_rows(results)

    sources = read_sources(a.repo)
    not_run = read_not_run(a.not_run)
    mapped = set()
    judged = []
    for row in rows:
        state, ran, missing = judge(row, results, sources, not_run)
        mapped.update((f, t) for f, t, _ in ran)
        judged.append({**row, "state": state, "ran": ran, "missing_files": missing})

    counts = {}
    for r in judged:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    failed_tests = [(f, t) for f, tests in results.items() for t, o in tests.items() if o == "FAILED"]
    # every named test that is not a plain "ok", once: what the summary lists
    problems = sorted({(f, t, o) for r in judged for f, t, o in r["ran"] if o not in ("ok", SKIPPED)})
    unmapped = sorted((f, t) for f, tests in results.items() for t in tests if (f, t) not in mapped)

    mark = {"pass": "✅ pass", "FAIL": "❌ FAIL", "open": "⚪ open", "not run": "➖ not run", "no test": "⚠️ no test",
            "skip": "⏭ skip"}
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
    for state in ["pass", "FAIL", "open", "skip", "not run", "no test"]:
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
    if problems:
        out += ["", "## Named tests that did not pass", ""] + [f"- {f}::{t}: {o}" for f, t, o in problems]
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
    for f, t, o in problems:
        print(f"report: {f}::{t}: {o}")
    if counts.get("not run") and ci:
        print(f"report: {counts['not run']} row(s) not run, and CI=true: a missing prerequisite is a failure",
              file=sys.stderr)
    if counts.get("FAIL") or counts.get("no test") or failed_tests or (ci and counts.get("not run")):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
