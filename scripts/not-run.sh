# Sourced by scripts/test and the tests/*/run scripts: one way to say that something did not run.
#   in_ci                 true when CI is set (and not "false" or "0")
#   not_run NAME REASON   outside CI: print "not run: NAME: REASON", append "NAME: REASON" to
#                         $FHIRGATE_NOT_RUN_FILE (scripts/test lists that file at the end), return 0;
#                         in CI: print "NAME: REASON (CI=true: a missing prerequisite is a failure)"
#                         on stderr and return 1
in_ci() { [ -n "${CI:-}" ] && [ "$CI" != false ] && [ "$CI" != 0 ]; }
not_run() {
  if in_ci; then
    echo "$1: $2 (CI=true: a missing prerequisite is a failure)" >&2
    return 1
  fi
  echo "not run: $1: $2"
  [ -z "${FHIRGATE_NOT_RUN_FILE:-}" ] || echo "$1: $2" >>"$FHIRGATE_NOT_RUN_FILE"
}
