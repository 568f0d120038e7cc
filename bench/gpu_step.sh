# Sourced by the prepared GPU scripts (bench/gpu_issue*.sh): `step NAME LIMIT COMMAND...` runs the
# command under its own time limit, cut to what is left of the script's `budget` (seconds, against
# bash's SECONDS), logs it to $out/logs/NAME.log and one line to $out/logs/steps.txt, and returns
# its exit status (1 when skipped for lack of budget), so one hang cannot eat the call.
step() {
    local name=$1 limit=$2 left=$((budget - SECONDS))
    shift 2
    if ((left < 10)); then
        echo "$name: skipped, ${left} s of the budget left" | tee -a "$out/logs/steps.txt"
        return 1
    fi
    ((limit > left)) && limit=$left
    local t0=$SECONDS
    timeout -k 5 "$limit" "$@" >"$out/logs/$name.log" 2>&1
    local rc=$?
    echo "$name: exit $rc after $((SECONDS - t0)) s (limit $limit s)$( ((rc == 124)) && echo ', timed out')" |
        tee -a "$out/logs/steps.txt"
    tail -n 12 "$out/logs/$name.log" | cut -c1-300
    return $rc
}
