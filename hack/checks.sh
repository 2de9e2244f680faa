# Shared by the shell test suites (hack/test-packaging.sh, hack/test-node.sh): TAP-like
# `ok - NAME` / `not ok - NAME` lines and a summary. Source it after setting $work.
passed=0 failed=0
# check NAME COMMAND...: runs COMMAND in this shell, output to a log shown on failure.
check() {
  local name=$1; shift
  local log="$work/check.log" started=$SECONDS
  if "$@" >"$log" 2>&1; then
    echo "ok - $name"
    [ -n "${VERBOSE:-}" ] && { sed 's/^/    /' "$log"; echo "    ($((SECONDS - started))s)"; }
    passed=$((passed + 1))
  else
    echo "not ok - $name"
    sed 's/^/    /' "$log" | tail -n 60
    failed=$((failed + 1))
  fi
  return 0
}
# summary: the last line, and the exit status of the suite.
summary() {
  echo "$passed passed, $failed failed"
  [ "$failed" -eq 0 ]
}
