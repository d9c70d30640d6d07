#!/usr/bin/env bash
# The smoke workflow on a real SLURM cluster of one node (this machine), each rule one SLURM job.
#
# As root on Debian/Ubuntu: installs slurm-wlm, slurmdbd, munge and mariadb-server (apt-get),
# starts munged, MariaDB, slurmdbd, slurmctld and slurmd in the foreground under a scratch folder
# (no systemd, no cgroups; in /etc only a link /etc/slurm/slurm.conf for the run), runs
#     snakemake --profile workflow/profiles/slurm --workflow-profile workflow/profiles/smoke \
#         --configfile config/smoke.yaml
# with its results in the scratch folder, prints what sacct recorded, and stops every daemon it
# started (by PID) when it exits. Exit status: that of snakemake (or of the first failed step).
# Arguments are passed on to snakemake (e.g. --until validate_data).
#
# Environment:
#   KETAMINE_PMX_SLURM_WORKDIR  scratch folder (default: a new mktemp -d); kept afterwards, it holds
#                               workflow/ (the run), log/ (daemon logs), sacct.txt, timings.txt
#   KETAMINE_PMX_SLURM_SKIP_INSTALL=1  do not call apt-get (the packages are already there)
# Files written to the scratch folder for tests/test_slurm.py:
#   sacct.txt    sacct --parsable2 of the run's jobs (allocations, one line per job)
#   timings.txt  seconds spent installing, starting the daemons, running the workflow
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
WORK=${KETAMINE_PMX_SLURM_WORKDIR:-$(mktemp -d "${TMPDIR:-/tmp}/ketamine-pmx-slurm.XXXXXX")}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
PACKAGES=(slurm-wlm slurmdbd munge mariadb-server)
PARTITION=debug
ACCOUNT=ketamine-pmx

say() { printf '[slurm-smoke %(%H:%M:%S)T] %s\n' -1 "$*"; }
die() { say "ERROR: $*" >&2; exit 1; }
now() { date +%s.%N; }
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$2"; }

[ "$(id -u)" -eq 0 ] || die "must run as root (it installs packages and starts daemons)"
command -v apt-get >/dev/null || die "needs apt-get (Debian or Ubuntu)"
command -v snakemake >/dev/null || die "snakemake not on PATH (activate the project's environment)"
python3 -c "import snakemake_executor_plugin_slurm" 2>/dev/null ||
    die "the SLURM executor plugin is missing: pip install -e '.[cluster]'"

# --- cleanup: stop what we started, newest first, by PID ------------------------------------
PIDS=()
NAMES=()
POLICY_RC=""
ETC_LINK=""
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
    local status=$?
    set +e
    if [ -n "$POLICY_RC" ]; then rm -f "$POLICY_RC"; fi
    if [ -n "$ETC_LINK" ] && [ -L "$ETC_LINK" ]; then rm -f "$ETC_LINK"; fi
    local i
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        if kill -0 "${PIDS[i]}" 2>/dev/null; then
            kill -TERM "${PIDS[i]}" 2>/dev/null
            for _ in $(seq 50); do kill -0 "${PIDS[i]}" 2>/dev/null || break; sleep 0.2; done
            if kill -0 "${PIDS[i]}" 2>/dev/null; then kill -KILL "${PIDS[i]}" 2>/dev/null; fi
            say "stopped ${NAMES[i]} (pid ${PIDS[i]})"
        fi
    done
    say "scratch folder: $WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start() { # start NAME COMMAND...: a daemon in the foreground, in the background of this shell
    local name=$1
    shift
    "$@" >"$WORK/log/$name.out" 2>&1 &
    PIDS+=($!)
    NAMES+=("$name")
    say "started $name (pid $!)"
}

wait_for() { # wait_for WHAT SECONDS COMMAND...: until COMMAND succeeds
    local what=$1 limit=$2
    shift 2
    local t0=$SECONDS
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS - t0 > limit)); then
            say "$what not ready after ${limit}s; logs:" >&2
            tail -n 20 "$WORK"/log/* >&2 || true
            die "$what did not start"
        fi
        local i
        for i in "${!PIDS[@]}"; do
            kill -0 "${PIDS[i]}" 2>/dev/null || {
                tail -n 30 "$WORK/log/${NAMES[i]}.out" "$WORK"/log/*.log >&2 2>/dev/null || true
                die "${NAMES[i]} exited"
            }
        done
        sleep 0.5
    done
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# --- 1. packages ------------------------------------------------------------------------------
t_install=$(now)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    [ "${KETAMINE_PMX_SLURM_SKIP_INSTALL:-0}" = 1 ] && die "packages missing: ${missing[*]}"
    # Keep apt from starting the packages' own services: this script starts its own daemons.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        POLICY_RC=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' >"$POLICY_RC" && chmod 755 "$POLICY_RC"
    fi
    say "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >"$WORK/apt.log" 2>&1 ||
        { tail -n 30 "$WORK/apt.log" >&2; die "apt-get install failed"; }
    if [ -n "$POLICY_RC" ]; then rm -f "$POLICY_RC" && POLICY_RC=""; fi
else
    say "packages already installed: ${PACKAGES[*]}"
fi
t_install_done=$(now)

# --- 2. daemons -------------------------------------------------------------------------------
t_daemons=$(now)
mkdir -p "$WORK"/{etc,munge,db,state,spool/slurmd,run,log,workflow}
chmod 700 "$WORK/munge"
NODE=$(hostname -s)
CTLD_PORT=$(free_port)
SLURMD_PORT=$(free_port)
DBD_PORT=$(free_port)
DB_PORT=$(free_port)
DB_PASS=$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
MUNGE_SOCKET=$WORK/munge/munge.socket
# CPUs and memory as slurmd sees them, so that the node is not drained for a mismatch.
CPUS="" MEM_MB=""
read -r CPUS MEM_MB < <(slurmd -C | sed -n 's/.*CPUs=\([0-9]*\).*RealMemory=\([0-9]*\).*/\1 \2/p') || true
if [ -z "$CPUS" ] || [ -z "$MEM_MB" ]; then die "could not read CPUs and RealMemory from slurmd -C"; fi

render() { # render TEMPLATE OUT: fill in the @VARS@
    sed -e "s|@WORK@|$WORK|g" -e "s|@NODE@|$NODE|g" -e "s|@CTLD_PORT@|$CTLD_PORT|g" \
        -e "s|@SLURMD_PORT@|$SLURMD_PORT|g" -e "s|@DBD_PORT@|$DBD_PORT|g" \
        -e "s|@DB_PORT@|$DB_PORT|g" -e "s|@DB_PASS@|$DB_PASS|g" \
        -e "s|@MUNGE_SOCKET@|$MUNGE_SOCKET|g" -e "s|@CPUS@|$CPUS|g" -e "s|@MEM_MB@|$MEM_MB|g" \
        -e "s|@PARTITION@|$PARTITION|g" "$1" >"$2"
}
render "$HERE/slurm.conf.in" "$WORK/etc/slurm.conf"
render "$HERE/slurmdbd.conf.in" "$WORK/etc/slurmdbd.conf"
chmod 600 "$WORK/etc/slurmdbd.conf"
# Every SLURM command and daemon below reads this configuration; slurmdbd finds slurmdbd.conf
# next to it.
export SLURM_CONF=$WORK/etc/slurm.conf
unset SLURM_JOB_ID
# Older executor plugins (2.0) read the user name from $USER, which cron and CI may not set.
export USER=${USER:-$(id -un)}
# Inside a job the executor runs the rule with srun under an environment without SLURM_*
# variables, SLURM_CONF included: srun there finds the configuration only at its default path.
# A link there for the length of the run (a stale link of an earlier, killed run is replaced;
# a real configuration is never touched).
ETC_CONF=/etc/slurm/slurm.conf
if [ -L "$ETC_CONF" ] && { [ ! -e "$ETC_CONF" ] || grep -q "run_slurm_smoke.sh" "$ETC_CONF"; }; then
    rm -f "$ETC_CONF"
fi
[ -e "$ETC_CONF" ] && die "$ETC_CONF exists: this machine has a SLURM configuration of its own"
mkdir -p /etc/slurm
ln -s "$SLURM_CONF" "$ETC_CONF"
ETC_LINK=$ETC_CONF

# munge: a fresh key for this cluster only, its own socket.
dd if=/dev/urandom of="$WORK/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$WORK/munge/munge.key"
start munged munged --foreground --force --key-file="$WORK/munge/munge.key" \
    --socket="$MUNGE_SOCKET" --pid-file="$WORK/run/munged.pid" \
    --log-file="$WORK/log/munged.log" --seed-file="$WORK/munge/munged.seed"
wait_for munge 20 bash -c "munge -n -S '$MUNGE_SOCKET' | unmunge -S '$MUNGE_SOCKET'"

# MariaDB on a free port of 127.0.0.1, data in the scratch folder.
mariadb-install-db --no-defaults --datadir="$WORK/db" --user=root \
    --auth-root-authentication-method=socket --skip-test-db >"$WORK/log/mariadb-install.log" 2>&1 ||
    { tail -n 20 "$WORK/log/mariadb-install.log" >&2; die "mariadb-install-db failed"; }
start mariadbd mariadbd --no-defaults --datadir="$WORK/db" --user=root \
    --bind-address=127.0.0.1 --port="$DB_PORT" --socket="$WORK/run/mysqld.sock" \
    --pid-file="$WORK/run/mariadbd.pid" --log-error="$WORK/log/mariadbd.log" \
    --innodb-buffer-pool-size=128M --innodb-lock-wait-timeout=900 --skip-log-bin
wait_for MariaDB 60 mariadb-admin --no-defaults --socket="$WORK/run/mysqld.sock" -u root ping
mariadb --no-defaults --socket="$WORK/run/mysqld.sock" -u root <<SQL
CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
CREATE USER 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
SQL

start slurmdbd slurmdbd -D
wait_for slurmdbd 60 sacctmgr -n list cluster
# The cluster, the project's account and root as its user: the executor checks the account with
# sacctmgr, and AccountingStorageEnforce=associations refuses jobs of unknown accounts.
sacctmgr -i add cluster ketamine-pmx-test >/dev/null
sacctmgr -i add account "$ACCOUNT" Description="ketamine-pmx smoke" Organization=test >/dev/null
sacctmgr -i add user root Account="$ACCOUNT" DefaultAccount="$ACCOUNT" >/dev/null

start slurmctld slurmctld -D -i
wait_for slurmctld 60 scontrol ping
start slurmd slurmd -D -N "$NODE"
wait_for "node $NODE" 60 bash -c "sinfo -h -N -o %t | grep -qx idle"
t_daemons_done=$(now)
say "cluster up: $(sinfo -h -o '%P %D %t %c CPUs %m MB' | head -n 1)"

# --- 3. the workflow, every rule a SLURM job --------------------------------------------------
t_workflow=$(now)
set +e
(
    cd "$REPO" &&
        KETAMINE_PMX_SLURM_ACCOUNT=$ACCOUNT KETAMINE_PMX_SLURM_PARTITION=$PARTITION \
            snakemake --profile workflow/profiles/slurm \
            --workflow-profile workflow/profiles/smoke --snakefile "$REPO/Snakefile" \
            --configfile "$REPO/config/smoke.yaml" --directory "$WORK/workflow" "$@"
) 2>&1 | tee "$WORK/snakemake.log"
status=${PIPESTATUS[0]}
set -e
t_workflow_done=$(now)

# --- 4. what SLURM recorded -------------------------------------------------------------------
# Job records reach slurmdbd when a job ends; give the last one a moment.
sleep 2
SACCT_FIELDS=JobID,JobName%36,Comment%42,Partition,Account%14,AllocCPUS,ReqMem,State,ExitCode,Elapsed
echo
say "sacct (one line per job; Comment = the rule and its wildcards):"
sacct -a -X --starttime=now-1days --format="$SACCT_FIELDS"
sacct -a -X --starttime=now-1days --parsable2 \
    --format="$(sed -E 's/%[0-9]+//g' <<<"$SACCT_FIELDS")" >"$WORK/sacct.txt"
{
    echo "install $(elapsed "$t_install" "$t_install_done")"
    echo "daemons $(elapsed "$t_daemons" "$t_daemons_done")"
    echo "workflow $(elapsed "$t_workflow" "$t_workflow_done")"
} >"$WORK/timings.txt"
echo
say "seconds: $(tr '\n' ' ' <"$WORK/timings.txt")"
say "snakemake exit status: $status"
exit "$status"
