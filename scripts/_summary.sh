# Sourced by scripts/test.sh (and anything else that closes on a verdict): one row per step,
# then one table and one line, `ALL PASSED` or what failed.
#   record VERSION WHAT OUTCOME   a row; OUTCOME is "passed N failed N skipped N" from pytest's
#                                 closing line (pytest_outcome), or a word such as "INSTALL FAILED"
#   run_recorded VERSION WHAT CMD...  runs CMD (its output shown as it comes), then records it
#   run_nested VERSION CMD...     runs CMD, a nested run of a script that closes on print_summary
#                                 (e.g. in scripts/newpython.sh's chroot), and takes its rows over
#   print_summary                 the table and the verdict; returns 1 if any row failed
SUMMARY_ROWS=()

record() {
    SUMMARY_ROWS+=("$1|$2|$3")
}

# pytest_outcome LOGFILE RC: "passed N failed N skipped N errors N" from the last closing line
# pytest printed ("1 failed, 1051 passed, 2 skipped in 81.23s"), or "CRASHED (exit RC)" if
# there is none; a non-zero RC with nothing failed is reported too (e.g. a worker died).
pytest_outcome() {
    local log="$1" rc="$2" line p=0 f=0 s=0 e=0
    line=$(grep -aE '^(=+ )?[0-9]+ (passed|failed|skipped|errors?|deselected|xfailed|xpassed|warnings?)(,| in )' \
        "$log" | tail -n 1 || true)
    if [ -z "$line" ]; then
        line=$(grep -aE '^(=+ )?no tests ran' "$log" | tail -n 1 || true)
        [ -n "$line" ] || { echo "CRASHED (exit $rc)"; return; }
    fi
    [[ $line =~ ([0-9]+)\ passed ]] && p=${BASH_REMATCH[1]}
    [[ $line =~ ([0-9]+)\ failed ]] && f=${BASH_REMATCH[1]}
    [[ $line =~ ([0-9]+)\ skipped ]] && s=${BASH_REMATCH[1]}
    [[ $line =~ ([0-9]+)\ errors? ]] && e=${BASH_REMATCH[1]}
    if [ "$rc" != 0 ] && [ "$f" = 0 ] && [ "$e" = 0 ]; then
        e="exit $rc"
    fi
    echo "passed $p failed $f skipped $s errors $e"
}

run_recorded() {
    local v="$1" what="$2" log rc
    shift 2
    log=$(mktemp)
    set +e
    "$@" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    set -e
    record "$v" "$what" "$(pytest_outcome "$log" "$rc")"
    rm -f "$log"
    return "$rc"
}

run_nested() {
    local v="$1" log rc rows row
    shift
    log=$(mktemp)
    set +e
    AIOFAST_SUMMARY_ROWS=1 "$@" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    set -e
    rows=$(grep -a '^SUMMARY-ROW|' "$log" || true)
    rm -f "$log"
    if [ -z "$rows" ]; then
        record "$v" tests "NO RESULT (exit $rc)"
        return 1
    fi
    while IFS= read -r row; do
        SUMMARY_ROWS+=("${row#SUMMARY-ROW|}")
    done <<<"$rows"
    return "$rc"
}

print_summary() {
    local row v what outcome p f s e verdict="" ok
    if [ -n "${AIOFAST_SUMMARY_ROWS:-}" ]; then  # for run_nested in the calling script
        for row in "${SUMMARY_ROWS[@]}"; do echo "SUMMARY-ROW|$row"; done
    fi
    echo
    printf '%-8s %-28s %8s %8s %8s %8s  %s\n' Python what passed failed skipped errors result
    for row in "${SUMMARY_ROWS[@]}"; do
        IFS='|' read -r v what outcome <<<"$row"
        if [[ $outcome =~ ^passed\ ([0-9]+)\ failed\ ([0-9]+)\ skipped\ ([0-9]+)\ errors\ (.+)$ ]]; then
            p=${BASH_REMATCH[1]} f=${BASH_REMATCH[2]} s=${BASH_REMATCH[3]} e=${BASH_REMATCH[4]}
            ok=ok
            if [ "$f" != 0 ] || [ "$e" != 0 ] || [ "$p" = 0 ]; then
                ok=FAILED
                verdict+="${verdict:+; }$v $what ($f failed, $e errors, $p passed)"
            fi
            printf '%-8s %-28s %8s %8s %8s %8s  %s\n' "$v" "$what" "$p" "$f" "$s" "$e" "$ok"
        else
            printf '%-8s %-28s %8s %8s %8s %8s  %s\n' "$v" "$what" - - - - "$outcome"
            verdict+="${verdict:+; }$v $what: $outcome"
        fi
    done
    if [ ${#SUMMARY_ROWS[@]} -eq 0 ]; then
        verdict="nothing ran"
    fi
    if [ -z "$verdict" ]; then
        echo "ALL PASSED"
        return 0
    fi
    echo "FAILED: $verdict"
    return 1
}
