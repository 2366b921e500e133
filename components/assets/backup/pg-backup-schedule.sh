#!/bin/sh
# picluster's backup schedule on Docker: the backup container's main process. It runs
# pg-backup.sh (next to this file) at every minute that matches the five cron fields of $SCHEDULE,
# in UTC, the way the Kubernetes CronJob does on K3s (robfig/cron's rules, concurrencyPolicy
# Forbid: one run at a time; a minute passed during a run is not made up). Started as root, it
# makes /backups (a fresh named volume is root's) the postgres user's, then runs as that user.
set -euf # -f: the `*` of a cron field is never a file name glob

here=$(cd -- "$(dirname -- "$0")" && pwd)
# $1 as a decimal number: without leading zeros, which $((...)) would read as octal ("08").
dec() {
    set -- "${1#"${1%%[!0]*}"}"
    echo "${1:-0}"
}

# Whether the number $1 matches the cron field $2 whose smallest value is $3: `*`, `N`, `A-B`,
# `*/S`, `N/S` (from N on), `A-B/S`, and lists of those separated by `,`.
field_matches() {
    value=$1 min=$3
    old_ifs=$IFS
    IFS=,
    for part in $2; do
        step=1
        case $part in */*) step=${part#*/} part=${part%%/*} ;; esac
        case $part in
        '*') lo=$min hi=99 ;;
        *-*) lo=${part%-*} hi=${part#*-} ;;
        *) lo=$part hi=$part ;;
        esac
        if [ "$step" != 1 ] && [ "$part" = "$lo" ] && [ "$part" != '*' ]; then
            hi=99
        fi
        lo=$(dec "$lo") hi=$(dec "$hi") step=$(dec "$step")
        if [ "$step" -gt 0 ] && [ "$value" -ge "$lo" ] && [ "$value" -le "$hi" ] &&
            [ $(((value - lo) % step)) -eq 0 ]; then
            IFS=$old_ifs
            return 0
        fi
    done
    IFS=$old_ifs
    return 1
}

# Whether the time "minute hour day month weekday" ($1..$5, as `date -u '+%M %H %d %m %w'`)
# matches $SCHEDULE. As in robfig/cron (which Kubernetes' CronJob uses): when both the day of
# the month and the day of the week are restricted (neither is `*`), either one may match.
schedule_matches() {
    minute=$(dec "$1") hour=$(dec "$2") day=$(dec "$3") month=$(dec "$4") weekday=$5
    # shellcheck disable=SC2086 # five fields, split on purpose (globbing is off)
    set -- $SCHEDULE
    field_matches "$minute" "$1" 0 && field_matches "$hour" "$2" 0 &&
        field_matches "$month" "$4" 1 || return 1
    dom=1 dow=1
    field_matches "$day" "$3" 1 || dom=0
    if ! field_matches "$weekday" "$5" 0; then
        dow=0
        if [ "$weekday" = 0 ] && field_matches 7 "$5" 0; then dow=1; fi # 7 is Sunday too
    fi
    if [ "$3" = '*' ] || [ "$5" = '*' ]; then
        [ "$dom" = 1 ] && [ "$dow" = 1 ]
    else
        [ "$dom" = 1 ] || [ "$dow" = 1 ]
    fi
}

if [ "${1:-}" = --matches ]; then # a check of the schedule alone: --matches "M H D Mo W"
    # shellcheck disable=SC2086
    schedule_matches $2
    exit
fi

if [ "$(id -u)" = 0 ]; then
    chown postgres:postgres /backups
    chmod 0700 /backups
    exec gosu postgres sh "$here/pg-backup-schedule.sh" "$@"
fi

# shellcheck disable=SC2086
set -- $SCHEDULE
if [ "$#" -ne 5 ]; then
    echo "picluster backup: SCHEDULE '$SCHEDULE' is not five cron fields" >&2
    exit 2
fi
trap 'echo "picluster backup: stopping"; exit 0' TERM INT
echo "picluster backup: schedule '$SCHEDULE' (UTC), keeping the newest $KEEP dumps in /backups"
while :; do
    # Sleep to the start of the next minute (in the background, so `docker stop` is answered).
    sleep $((60 - $(dec "$(date -u +%S)"))) &
    wait $! || :
    # shellcheck disable=SC2046 # the five fields of the current time
    if schedule_matches $(date -u '+%M %H %d %m %w'); then
        sh "$here/pg-backup.sh" || echo "picluster backup: this run failed; next run as scheduled" >&2
    fi
done
