#!/usr/bin/env bash
# A real 3-node RabbitMQ cluster on this machine, loopback only, for Runlet's failure-injection
# tests (tests/reliability). Recipe: FACTS.md §3.1 ("Three nodes on ONE machine"), shared notes.
#
# With the default settings (node N = 1, 2, 3; B = RUNLET_CLUSTER_PORT_BASE, default 5700):
#
#   node         AMQP (B+N)       management (B+10000+N)  Prometheus (B+10090+N)  distribution (B+20000+N)
#   c1@localhost 127.0.0.1:5701   127.0.0.1:15701         127.0.0.1:15791         127.0.0.1:25701
#   c2@localhost 127.0.0.1:5702   127.0.0.1:15702         127.0.0.1:15792         127.0.0.1:25702
#   c3@localhost 127.0.0.1:5703   127.0.0.1:15703         127.0.0.1:15793         127.0.0.1:25703
#
#   scripts/cluster.sh up          start the three nodes and form the cluster (idempotent)
#   scripts/cluster.sh down        stop all three gracefully (kill by pid file if that fails); keep data
#   scripts/cluster.sh destroy     down, then delete the cluster folder
#   scripts/cluster.sh kill N      kill -9 node N (a crash, for tests)
#   scripts/cluster.sh start N     start node N again and wait for it (it rejoins by itself)
#   scripts/cluster.sh stop N      stop node N gracefully
#   scripts/cluster.sh wait N [S]  wait up to S seconds (default RUNLET_CLUSTER_TIMEOUT) for node N
#   scripts/cluster.sh status      per node: state, pid, ports; exit 0 only when all three run
#   scripts/cluster.sh urls        the three AMQP URLs, one per line
#
# Restarting a stopped cluster (RabbitMQ 3.10, clustering guide "Restarting Cluster Nodes"): a node
# that stopped while peers still ran waits, when it boots, for one of them (10 x 30 s by default,
# mnesia_table_loading_retry_limit/_timeout); only the last node to stop boots on its own. And
# nodes that boot at the same time race in the feature-flag sync (3.10 compiles its feature-flag
# registry at runtime; one booting node asks the other, whose registry is not complete yet, to
# enable a flag, and one of them dies with `incompatible_feature_flags ... {badmap,undefined} ...
# rabbit_feature_flags:enable_dependencies`). So:
#   - whenever a node stops (stop, kill, down) and no other node of the cluster runs any more, its
#     number is written to $RUNLET_CLUSTER_DIR/last-stopped;
#   - 'up' boots that node first and the others after it, ONE AT A TIME, each once the previous one
#     has finished booting, so no two nodes ever boot together. Should the first node wait for
#     peers after all (the record is missing or stale, e.g. after the machine rebooted), the others
#     are started right away, as RabbitMQ requires;
#   - a node that dies while booting with incompatible_feature_flags is started again, up to
#     RUNLET_CLUSTER_BOOT_RETRIES more times;
#   - a node that still cannot boot while another member runs is forgotten by that member
#     (forget_cluster_node), reset (its data folder is moved to nN/mnesia.reset) and joined again
#     as a blank node; quorum queues get a replica on it again (rabbitmq-queues grow). If the first
#     node cannot boot at all, the next one is started with force_boot. A node that cannot be
#     brought up by any of this is named in the error, with the log line that says why.
#
# The machine's own RabbitMQ node (rabbit@localhost on 5672/25672) is never touched; the nodes
# share its epmd (4369), which is fine. Everything lives in $RUNLET_CLUSTER_DIR (default
# /tmp/runlet-cluster): home/.erlang.cookie (shared by the nodes and the CLI), last-stopped,
# n1..n3/{mnesia,log,pid,rabbitmq.conf,enabled_plugins}. Only processes named by the pid files in
# that folder (and checked to be that node's Erlang VM) are ever signalled. Must run as root
# (FACTS §3.1).
#
# Environment: RUNLET_CLUSTER_PREFIX        node name prefix: nodes PREFIX1..3@localhost (default c)
#              RUNLET_CLUSTER_PORT_BASE     B in the port table above (default 5700)
#              RUNLET_CLUSTER_DIR           the cluster folder (default /tmp/runlet-cluster, or
#                                           /tmp/runlet-cluster-PREFIX for another prefix)
#              RUNLET_CLUSTER_TIMEOUT       seconds to wait for one node to boot or stop (default 120)
#              RUNLET_CLUSTER_BOOT_RETRIES  new starts of a node that died of incompatible_feature_flags
#                                           while booting, before it is reset and rejoined (default 2)
# A second cluster beside the default one (experiments, tests/reliability/test_cluster_script.py)
# needs all three: its own prefix, port base and folder.
set -euo pipefail

readonly PREFIX="${RUNLET_CLUSTER_PREFIX:-c}"
readonly PORT_BASE="${RUNLET_CLUSTER_PORT_BASE:-5700}"
if [[ $PREFIX == c ]]; then
    readonly BASE="${RUNLET_CLUSTER_DIR:-/tmp/runlet-cluster}"
else
    readonly BASE="${RUNLET_CLUSTER_DIR:-/tmp/runlet-cluster-$PREFIX}"
fi
readonly TIMEOUT="${RUNLET_CLUSTER_TIMEOUT:-120}"
readonly BOOT_RETRIES="${RUNLET_CLUSTER_BOOT_RETRIES:-2}"
readonly BIN=/usr/lib/rabbitmq/bin
readonly HOST=127.0.0.1
readonly NODES=(1 2 3)
readonly CLI_TIMEOUT=60 # bound for one quick CLI call (the CLI itself needs ~1-2 s to start)
readonly LAST_STOPPED="$BASE/last-stopped"
# Ports of the machine's own RabbitMQ node and of epmd: no cluster node may use one of them.
readonly RESERVED_PORTS=(4369 5672 15672 15692 25672)

log() { printf 'cluster: %s\n' "$*"; }
die() {
    printf 'cluster: ERROR: %s\n' "$*" >&2
    exit 1
}

usage() {
    cat <<'EOF'
usage: scripts/cluster.sh up|down|destroy|status|urls
       scripts/cluster.sh kill|start|stop N        (N = 1, 2 or 3)
       scripts/cluster.sh wait N [SECONDS]

  up       start PREFIX1..3@localhost (default c1..c3; AMQP 127.0.0.1:B+1..B+3, B default 5700) and
           form the cluster: the node that stopped last first, then the others one at a time;
           idempotent
  down     stop all three (graceful, then by pid file); data is kept
  destroy  down, then delete the cluster folder ($RUNLET_CLUSTER_DIR, default /tmp/runlet-cluster)
  kill N   kill -9 node N
  start N  start node N and wait until it runs (it rejoins the cluster by itself)
  stop N   stop node N gracefully
  wait N   wait until node N has booted
  status   state, pid and ports of each node; exit 0 only when all three are running
  urls     print the three AMQP URLs, one per line

environment: RUNLET_CLUSTER_PREFIX (default c), RUNLET_CLUSTER_PORT_BASE (default 5700),
             RUNLET_CLUSTER_DIR, RUNLET_CLUSTER_TIMEOUT (default 120),
             RUNLET_CLUSTER_BOOT_RETRIES (default 2)
EOF
}

# ---------------------------------------------------------------------------------------------
# per-node names and environment

node_name() { printf '%s%s@localhost\n' "$PREFIX" "$1"; }
node_dir() { printf '%s/n%s\n' "$BASE" "$1"; }
pid_file() { printf '%s/n%s/pid\n' "$BASE" "$1"; }
node_log() { printf '%s/n%s/log/%s.log\n' "$BASE" "$1" "$(node_name "$1")"; }
amqp_port() { printf '%s\n' $((PORT_BASE + $1)); }
mgmt_port() { printf '%s\n' $((PORT_BASE + 10000 + $1)); }
prometheus_port() { printf '%s\n' $((PORT_BASE + 10090 + $1)); }
dist_port() { printf '%s\n' $((PORT_BASE + 20000 + $1)); }
url() { printf 'amqp://guest:guest@%s:%s/\n' "$HOST" "$(amqp_port "$1")"; }

# Refuses settings that could reach another node: a bad prefix, a port base whose ports fall out
# of range or onto the machine's own node, a relative folder.
check_settings() {
    [[ $PREFIX =~ ^[a-z][a-z0-9_]{0,19}$ ]] \
        || die "RUNLET_CLUSTER_PREFIX must be a lower-case letter then letters, digits or _, got '$PREFIX'"
    if ! [[ $PORT_BASE =~ ^[1-9][0-9]{3,4}$ ]] || ((PORT_BASE < 1024 || PORT_BASE > 45532)); then
        die "RUNLET_CLUSTER_PORT_BASE must be a number from 1024 to 45532, got '$PORT_BASE'"
    fi
    [[ $BASE == /* ]] || die "RUNLET_CLUSTER_DIR must be an absolute path, got '$BASE'"
    [[ $TIMEOUT =~ ^[1-9][0-9]*$ ]] \
        || die "RUNLET_CLUSTER_TIMEOUT must be a positive whole number, got '$TIMEOUT'"
    [[ $BOOT_RETRIES =~ ^[0-9]$ ]] \
        || die "RUNLET_CLUSTER_BOOT_RETRIES must be a number from 0 to 9, got '$BOOT_RETRIES'"
    local n p r
    for n in "${NODES[@]}"; do
        for p in "$(amqp_port "$n")" "$(mgmt_port "$n")" "$(prometheus_port "$n")" \
            "$(dist_port "$n")"; do
            for r in "${RESERVED_PORTS[@]}"; do
                ((p != r)) || die "RUNLET_CLUSTER_PORT_BASE=$PORT_BASE puts node $n on port $p," \
                    "which belongs to the machine's own RabbitMQ node or epmd"
            done
        done
    done
}

# Exports the environment of node $1 (FACTS §3.1) into the current (sub)shell; both the server
# and the CLI calls run with it, so they share HOME and thus the Erlang cookie.
node_env() {
    local n=$1 dir
    dir=$(node_dir "$n")
    export HOME="$BASE/home"
    RABBITMQ_NODENAME=$(node_name "$n")
    export RABBITMQ_NODENAME
    export RABBITMQ_NODE_IP_ADDRESS=$HOST
    export RABBITMQ_NODE_PORT=$((PORT_BASE + n))
    export RABBITMQ_DIST_PORT=$((PORT_BASE + 20000 + n))
    export RABBITMQ_MNESIA_BASE="$dir/mnesia"
    export RABBITMQ_LOG_BASE="$dir/log"
    export RABBITMQ_PID_FILE="$dir/pid"
    export RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf"
    export RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins"
    export RABBITMQ_CONF_ENV_FILE="$BASE/empty-env.conf"
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
}

# cli TOOL N SECONDS ARGS...: rabbitmqctl / rabbitmq-queues against node N, bounded by SECONDS.
cli() {
    local tool=$1 n=$2 limit=$3
    shift 3
    (
        node_env "$n"
        timeout "$limit" "$BIN/$tool" -n "$(node_name "$n")" "$@"
    )
}

# ctl N SECONDS ARGS...: rabbitmqctl against node N, bounded by SECONDS.
ctl() { cli rabbitmqctl "$@"; }

need_root() {
    [[ $EUID -eq 0 ]] || die "must run as root (the nodes and the CLI run as root here, FACTS §3.1)"
}

check_node_arg() {
    [[ ${1:-} =~ ^[123]$ ]] || {
        usage >&2
        die "expected a node number 1, 2 or 3, got '${1:-}'"
    }
}

# ---------------------------------------------------------------------------------------------
# processes

# True when pid $1 is alive and is the Erlang VM of node $2 (guards against a recycled pid).
is_node_process() {
    local pid=$1 n=$2
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/environ ]] || return 1
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == beam* ]] || return 1
    # (grep reads a process substitution: under pipefail, tr's SIGPIPE must not count)
    grep -qxF "RABBITMQ_PID_FILE=$(pid_file "$n")" < <(tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null)
}

# Prints the pid of node $1 when its pid file names a live VM of that node.
node_pid() {
    local f pid
    f=$(pid_file "$1")
    [[ -s $f ]] || return 1
    pid=$(tr -dc '0-9' <"$f")
    is_node_process "$pid" "$1" || return 1
    printf '%s\n' "$pid"
}

# Pids of the live Erlang VMs of node $1, whether or not its pid file names them (a VM that is
# still starting has not written it yet).
vm_pids() {
    local comm pid
    for comm in /proc/[0-9]*/comm; do
        [[ $(cat "$comm" 2>/dev/null) == beam* ]] || continue
        pid=${comm#/proc/}
        pid=${pid%/comm}
        is_node_process "$pid" "$1" && printf '%s\n' "$pid"
    done
    return 0
}

# True when another node than $1 (or any node, without $1) has a live VM.
others_running() {
    local n
    for n in "${NODES[@]}"; do
        [[ $n == "${1:-}" ]] && continue
        node_pid "$n" >/dev/null && return 0
    done
    return 1
}

# Prints the first node other than $1 (without $1: any node) whose VM is alive and whose AMQP
# port accepts connections: a member to sync with, forget through or join.
running_member() {
    local n
    for n in "${NODES[@]}"; do
        [[ $n == "${1:-}" ]] && continue
        if node_pid "$n" >/dev/null && tcp_open "$(amqp_port "$n")"; then
            printf '%s\n' "$n"
            return 0
        fi
    done
    return 1
}

# True when something accepts TCP connections on $HOST:$1.
tcp_open() {
    # shellcheck disable=SC2016  # $0 and $1 are expanded by the inner bash, on purpose
    timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$HOST" "$1" 2>/dev/null
}

# wait_gone PID SECONDS: true once PID has exited.
wait_gone() {
    local pid=$1 end=$((SECONDS + $2))
    while kill -0 "$pid" 2>/dev/null; do
        ((SECONDS < end)) || return 1
        sleep 0.2
    done
}

# Pids of VMs started from this cluster folder whose pid file no longer names them (orphans).
orphans() {
    local n pid own
    for n in "${NODES[@]}"; do
        own=$(node_pid "$n" 2>/dev/null) || own=""
        for pid in $(vm_pids "$n"); do
            [[ $pid == "$own" ]] || printf '%s\n' "$pid"
        done
    done
}

# Prints to stderr the end of node $1's log and of its startup output, to explain a failure.
log_tail() {
    local dir f
    dir=$(node_dir "$1")
    for f in "$(node_log "$1")" "$dir/log/startup.out"; do
        if [[ -s $f ]]; then
            printf '\n--- last lines of %s ---\n' "$f" >&2
            tail -n 15 "$f" >&2 || true
        fi
    done
}

# ---------------------------------------------------------------------------------------------
# node logs: what a boot attempt wrote

# The size in bytes of node $1's log (0 when there is none): where the next boot's lines begin.
log_size() {
    local f
    f=$(node_log "$1")
    if [[ -f $f ]]; then stat -c %s "$f"; else echo 0; fi
}

# new_log N OFFSET: what node N's log got after byte OFFSET (all of it if it has been rotated).
new_log() {
    local f size
    f=$(node_log "$1")
    [[ -f $f ]] || return 0
    size=$(stat -c %s "$f")
    if ((size < $2)); then cat "$f"; else tail -c +$(($2 + 1)) "$f"; fi
}

# boot_cause N OFFSET: one line saying why node N's boot since OFFSET failed, from its log: the
# "Error during startup: ..." term of its BOOT FAILED report (else the first line naming
# incompatible_feature_flags or a table-wait timeout, else its last error lines), without
# timestamps, its continuation lines joined, cut to 600 characters.
boot_cause() {
    local text cause pattern
    text=$(new_log "$1" "$2" | sed -E 's/^[0-9]{4}-[0-9-]+ [0-9:.+-]+ \[[a-z]+\] <[0-9.]+> ?//')
    for pattern in '^(Error|Exception) during startup' \
        'incompatible_feature_flags|timeout_waiting_for_tables|Timeout contacting cluster nodes'; do
        # the first matching line and the indented lines that continue its Erlang term
        cause=$(awk -v re="$pattern" 'on && /^[[:space:]]/ { print; next } on { exit }
                $0 ~ re { on = 1; print }' <<<"$text" | head -n 15 | tr -s ' \n' ' ')
        [[ -z $cause ]] || break
    done
    if [[ -z $cause ]]; then
        cause=$(grep -E '\[(error|critical)\]' <<<"$text" | tail -n 3 | tr -s ' \n' ' ' || true)
    fi
    if [[ -z $cause ]]; then
        cause="its VM exited without logging why in $(node_log "$1") (rabbitmq-server -detached"
        cause+=" drops the VM's own output; a rabbitmq.conf it cannot parse is one such cause)"
    fi
    printf '%s\n' "${cause:0:600}"
}

# ---------------------------------------------------------------------------------------------
# set-up of the folder (never deletes anything)

# write_if_changed FILE CONTENT
write_if_changed() {
    if [[ ! -f $1 || $(cat "$1") != "$2" ]]; then
        printf '%s\n' "$2" >"$1"
    fi
}

prepare() {
    mkdir -p "$BASE/home"
    chmod 700 "$BASE/home"
    local cookie="$BASE/home/.erlang.cookie"
    if [[ ! -s $cookie ]]; then
        log "creating the shared Erlang cookie $cookie"
        (
            umask 077
            od -An -tx1 -N20 /dev/urandom | tr -d ' \n' >"$cookie"
        )
    fi
    chmod 400 "$cookie"
    : >>"$BASE/empty-env.conf"
    local n dir
    for n in "${NODES[@]}"; do
        dir=$(node_dir "$n")
        mkdir -p "$dir/mnesia" "$dir/log"
        write_if_changed "$dir/rabbitmq.conf" "listeners.tcp.default = $HOST:$(amqp_port "$n")
management.tcp.port = $(mgmt_port "$n")
management.tcp.ip = $HOST
prometheus.tcp.port = $(prometheus_port "$n")
prometheus.tcp.ip = $HOST
loopback_users = none"
        write_if_changed "$dir/enabled_plugins" "[rabbitmq_management,rabbitmq_prometheus]."
    done
}

# Takes an exclusive lock on the cluster folder so two runs don't start the same node twice.
lock() {
    exec 9>"$BASE/.lock"
    flock -w $((TIMEOUT * 3)) 9 || die "another scripts/cluster.sh holds $BASE/.lock"
}

# ---------------------------------------------------------------------------------------------
# which node stopped last

# Called once node $1 has stopped (or was killed): when no other node runs any more, $1 is the
# last node to stop, the one that must boot first next time.
note_stopped() {
    if ! others_running "$1"; then
        printf '%s\n' "$1" >"$LAST_STOPPED"
        log "$(node_name "$1") was the last node to stop (recorded in $LAST_STOPPED)"
    fi
}

# The node numbers in boot order: the recorded last-stopped node first (node 1 without a record),
# then the others in ascending order.
boot_order() {
    local first=1 rec n
    if [[ -s $LAST_STOPPED ]]; then
        rec=$(tr -dc '0-9' <"$LAST_STOPPED")
        [[ $rec =~ ^[123]$ ]] && first=$rec
    fi
    printf '%s\n' "$first"
    for n in "${NODES[@]}"; do
        [[ $n == "$first" ]] || printf '%s\n' "$n"
    done
}

# ---------------------------------------------------------------------------------------------
# one node

# Starts node $1 (detached) unless it runs; does not wait. Returns 0 when it started it.
start_node() {
    local n=$1 name pid port
    name=$(node_name "$n")
    if pid=$(node_pid "$n"); then
        log "$name: already running (pid $pid)"
        return 1
    fi
    port=$(amqp_port "$n")
    if tcp_open "$port"; then
        die "$name: $HOST:$port is taken by another process (an orphaned node? see 'ss -ltnp')"
    fi
    # A stale pid file (after kill -9) would make 'rabbitmqctl wait' watch the dead pid.
    rm -f "$(pid_file "$n")"
    log "$name: starting (rabbitmq-server -detached; AMQP $HOST:$port)"
    if ! (
        node_env "$n"
        cd "$(node_dir "$n")" # where an erl_crash.dump would land
        # 9>&-: the node must not inherit (and so keep holding) the folder lock.
        timeout 60 "$BIN/rabbitmq-server" -detached 9>&-
    ) >>"$(node_dir "$n")/log/startup.out" 2>&1; then
        log_tail "$n"
        die "$name: 'rabbitmq-server -detached' failed"
    fi
}

# wait_node N SECONDS: waits until node N has booted (rabbitmqctl wait <pidfile>).
wait_node() {
    local n=$1 limit=$2 name start=$SECONDS
    name=$(node_name "$n")
    log "$name: waiting up to ${limit}s for it to boot"
    if ! ctl "$n" $((limit + 15)) wait "$(pid_file "$n")" --timeout "$limit" >/dev/null 2>&1; then
        log_tail "$n"
        if node_pid "$n" >/dev/null; then
            die "$name: did not finish booting within ${limit}s (a restarted cluster node waits" \
                "for the other nodes it last saw; are they starting?)"
        fi
        die "$name: no live node process after ${limit}s: it was not started, or it died while" \
            "booting (then see the log above)"
    fi
    log "$name: running (booted after $((SECONDS - start))s)"
}

# Set by await_boot and boot_node when a boot fails: why (a log line). BOOT_OFFSET: where in
# its log the last boot started by boot_node began.
BOOT_CAUSE=""
BOOT_OFFSET=0
BOOT_FF=0 # 1 when the failed boot's log names incompatible_feature_flags

# await_boot N OFFSET SECONDS [peers]: follows the boot of node N, just started, through its log
# (the lines after byte OFFSET) and its processes, without the CLI (slow to start on a busy
# machine). Returns 0 once the log says "Server startup complete" and AMQP accepts connections;
# 1 when its boot failed or its VM is gone (BOOT_CAUSE says why; a VM left behind is stopped);
# 2 when it is alive but has not booted within SECONDS; with "peers", 3 as soon as the log shows
# it waits for peers that do not answer (timeout_waiting_for_tables: it was not the last node to
# stop).
await_boot() {
    local n=$1 offset=$2 limit=$3 detect=${4:-} end=$((SECONDS + $3)) text gone_since=-1 pid
    BOOT_CAUSE=""
    BOOT_FF=0
    while :; do
        text=$(new_log "$n" "$offset")
        if grep -qF 'BOOT FAILED' <<<"$text"; then
            # Its VM halts by itself once it has logged the error: give it a moment, then the cause.
            local end_gone=$((SECONDS + 15))
            while [[ -n $(vm_pids "$n") ]] && ((SECONDS < end_gone)); do sleep 0.5; done
            for pid in $(vm_pids "$n"); do stop_vm "$n" "$pid"; done
            sleep 0.5
            BOOT_CAUSE=$(boot_cause "$n" "$offset")
            text=$(new_log "$n" "$offset")
            [[ $text == *incompatible_feature_flags* ]] && BOOT_FF=1
            return 1
        fi
        if node_pid "$n" >/dev/null; then
            gone_since=-1
            if grep -qF 'Server startup complete' <<<"$text" && tcp_open "$(amqp_port "$n")"; then
                return 0
            fi
            if [[ $detect == peers ]] && grep -qF 'timeout_waiting_for_tables' <<<"$text"; then
                return 3
            fi
        elif [[ -z $(vm_pids "$n") ]]; then
            # No VM of this node (pid file or not) for 3 s in a row: it is gone.
            if ((gone_since < 0)); then
                gone_since=$SECONDS
            elif ((SECONDS - gone_since >= 3)); then
                BOOT_CAUSE=$(boot_cause "$n" "$offset")
                text=$(new_log "$n" "$offset")
                [[ $text == *incompatible_feature_flags* ]] && BOOT_FF=1
                return 1
            fi
        fi
        if ((SECONDS >= end)); then
            BOOT_CAUSE="still booting after ${limit}s: $(boot_cause "$n" "$offset")"
            return 2
        fi
        sleep 1
    done
}

# stop_vm N PID: TERM, then KILL, the VM PID of node N (checked to be that node's VM).
stop_vm() {
    local n=$1 pid=$2 name
    name=$(node_name "$n")
    is_node_process "$pid" "$n" || return 0
    log "$name: sending SIGTERM to pid $pid"
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_gone "$pid" 30 && is_node_process "$pid" "$n"; then
        log "$name: still alive; sending SIGKILL to pid $pid"
        kill -KILL "$pid" 2>/dev/null || true
        wait_gone "$pid" 10 || die "$name: pid $pid survived SIGKILL"
    fi
}

# boot_node N [peers]: starts node N (unless it runs) and follows its boot (await_boot). A node
# that dies with incompatible_feature_flags is started again, up to BOOT_RETRIES times. Returns
# await_boot's codes; on failure BOOT_CAUSE says why.
boot_node() {
    local n=$1 detect=${2:-} name attempt=0 offset rc start
    name=$(node_name "$n")
    local pid
    if pid=$(node_pid "$n"); then
        if tcp_open "$(amqp_port "$n")"; then
            log "$name: already running (pid $pid)"
        else
            wait_node "$n" "$TIMEOUT" # alive, still booting
        fi
        return 0
    fi
    while :; do
        start=$SECONDS
        offset=$(log_size "$n")
        BOOT_OFFSET=$offset
        start_node "$n" || true
        rc=0
        await_boot "$n" "$offset" "$TIMEOUT" "$detect" || rc=$?
        case $rc in
            0)
                log "$name: running (booted after $((SECONDS - start))s)"
                return 0
                ;;
            3)
                log "$name: waits for the peers it last saw (it was not the last node to stop)"
                return 3
                ;;
            2)
                log "$name: $BOOT_CAUSE"
                return 2
                ;;
        esac
        log "$name: died while booting: $BOOT_CAUSE"
        if ((BOOT_FF == 1 && attempt < BOOT_RETRIES)); then
            attempt=$((attempt + 1))
            log "$name: feature-flag sync failed; starting it again ($attempt of $BOOT_RETRIES)"
            sleep 2
            continue
        fi
        return 1
    done
}

# rejoin_fresh N CAUSE: node N cannot boot (CAUSE) but another member runs: that member forgets
# N, N's data folder is moved aside (nN/mnesia.reset, replacing an older one), N boots blank,
# joins the member and gets its quorum queue replicas back. Dies when that fails too.
rejoin_fresh() {
    local n=$1 cause=$2 name m member dir pid out
    name=$(node_name "$n")
    m=$(running_member "$n") || die "$name could not boot: $cause (and no other node runs to" \
        "rejoin it through)"
    member=$(node_name "$m")
    if pid=$(node_pid "$n"); then stop_vm "$n" "$pid"; fi
    log "$name: could not boot ($cause); $member forgets it, it is reset and joins again"
    out=$(ctl "$m" "$TIMEOUT" forget_cluster_node "$name" 2>&1) || {
        # Not a member any more (forgotten before) is fine; anything else is not.
        grep -qiE 'not_a_cluster_node|not a member' <<<"$out" || {
            printf '%s\n' "$out" >&2
            die "$name could not boot: $cause; then '$member: rabbitmqctl forget_cluster_node" \
                "$name' failed"
        }
    }
    dir=$(node_dir "$n")
    rm -rf -- "$dir/mnesia.reset"
    mv -- "$dir/mnesia" "$dir/mnesia.reset"
    mkdir -p "$dir/mnesia"
    local rc=0
    boot_node "$n" || rc=$?
    if ((rc != 0)); then
        log_tail "$n"
        die "$name could not boot: $cause; reset to a blank node it still did not boot:" \
            "$BOOT_CAUSE"
    fi
    ensure_member "$n" "$m"
    out=$(cli rabbitmq-queues "$m" "$TIMEOUT" grow "$name" all 2>&1) \
        || log "$name: 'rabbitmq-queues grow $name all' failed (quorum queues keep fewer" \
            "replicas): $out"
    log "$name: reset and rejoined; quorum queues grown onto it"
}

# force_boot N: node N (stopped) may boot next time without waiting for the peers it last saw.
# What 'rabbitmqctl force_boot' does to a stopped node: an empty force_load file in its data dir.
force_boot() {
    local n=$1 dir
    dir="$(node_dir "$n")/mnesia/$(node_name "$n")"
    log "$(node_name "$n"): force_boot (it boots without waiting for its peers)"
    [[ -d $dir ]] || die "$(node_name "$n"): force_boot: no data folder $dir"
    : >"$dir/force_load"
}

# stop_node N: graceful stop; after a failure or timeout TERM, then KILL, by the pid file.
stop_node() {
    local n=$1 name pid
    name=$(node_name "$n")
    if ! pid=$(node_pid "$n"); then
        log "$name: not running"
        rm -f "$(pid_file "$n")"
        return 0
    fi
    log "$name: stopping (pid $pid)"
    if ctl "$n" "$TIMEOUT" stop "$(pid_file "$n")" >/dev/null 2>&1 && wait_gone "$pid" 10; then
        log "$name: stopped"
        rm -f "$(pid_file "$n")"
        note_stopped "$n"
        return 0
    fi
    if is_node_process "$pid" "$n"; then
        log "$name: graceful stop failed or timed out"
        stop_vm "$n" "$pid"
    fi
    rm -f "$(pid_file "$n")"
    log "$name: stopped"
    note_stopped "$n"
}

# The JSON list $2 ("running_nodes", "disk_nodes") of node $1's cluster_status, one node a line.
cluster_list() {
    local json
    json=$(ctl "$1" "$CLI_TIMEOUT" -q cluster_status --formatter json 2>/dev/null) || return 1
    jq -r --arg k "$2" '.[$k] // [] | .[]' <<<"$json"
}

# ensure_member N SEED: joins node N to node SEED's cluster unless its cluster_status lists SEED.
ensure_member() {
    local n=$1 name seed members
    name=$(node_name "$n")
    seed=$(node_name "$2")
    members=$(cluster_list "$n" disk_nodes) || die "$name: 'rabbitmqctl cluster_status' failed"
    if grep -qxF "$seed" <<<"$members"; then
        log "$name: already a member of $seed's cluster"
        return 0
    fi
    log "$name: joining $seed (stop_app; reset; join_cluster $seed; start_app)"
    local step out
    for step in stop_app reset "join_cluster $seed" start_app; do
        # The CLI logs harmless feature-flag warnings while joining: show its output on failure only.
        # shellcheck disable=SC2086  # $step is a command plus its argument, split on purpose
        out=$(ctl "$n" "$TIMEOUT" $step 2>&1) || {
            printf '%s\n' "$out" >&2
            log_tail "$n"
            die "$name: 'rabbitmqctl $step' failed"
        }
    done
    log "$name: joined"
}

# ---------------------------------------------------------------------------------------------
# commands

all_running() {
    local n
    for n in "${NODES[@]}"; do
        node_pid "$n" >/dev/null || return 1
        tcp_open "$(amqp_port "$n")" || return 1
    done
}

# True when node 1's cluster_status lists all three nodes as running; prints the running nodes.
cluster_ok() {
    local running
    running=$(cluster_list 1 running_nodes) || return 1
    running=$(sort <<<"$running" | paste -sd' ')
    printf '%s\n' "$running"
    [[ $running == "$(node_name 1) $(node_name 2) $(node_name 3)" ]]
}

cmd_urls() {
    local n
    for n in "${NODES[@]}"; do url "$n"; done
}

# Brings up the nodes of a fully stopped cluster one at a time, the last one to stop first (see
# the header). Fills the global FAILED (node numbers) and CAUSES (why each failed).
FAILED=()
declare -A CAUSES=()
boot_stopped_cluster() {
    local order n rc first
    mapfile -t order < <(boot_order)
    first=${order[0]}
    log "up: booting $(node_name "$first") first (the last node to stop), then the others" \
        "one at a time"
    rc=0
    boot_node "$first" peers || rc=$?
    case $rc in
        0) ;;
        3)
            # The record was wrong: it waits for peers it last saw. They have to come up now, so
            # start them all (the old way: nodes that wait for each other must boot together).
            log "up: starting the other nodes now, $(node_name "$first") waits for them"
            local offsets=() m r
            offsets[first]=$BOOT_OFFSET # its boot is under way; it completes once its peers run
            for m in "${order[@]:1}"; do
                offsets[m]=$(log_size "$m")
                start_node "$m" || true
            done
            for m in "${order[@]}"; do
                r=0
                await_boot "$m" "${offsets[m]}" "$TIMEOUT" || r=$?
                if ((r == 0)); then
                    log "$(node_name "$m"): running"
                else
                    FAILED+=("$m")
                    CAUSES[$m]=$BOOT_CAUSE
                fi
            done
            return 0
            ;;
        *)
            FAILED+=("$first")
            CAUSES[$first]=$BOOT_CAUSE
            # Its peers wait for it and would time out: the next one boots without waiting.
            if ((rc == 2)); then
                local pid
                if pid=$(node_pid "$first"); then stop_vm "$first" "$pid"; fi
            fi
            force_boot "${order[1]}"
            ;;
    esac
    for n in "${order[@]:1}"; do
        rc=0
        boot_node "$n" || rc=$?
        if ((rc != 0)); then
            FAILED+=("$n")
            CAUSES[$n]=$BOOT_CAUSE
        fi
    done
}

cmd_up() {
    need_root
    local begin=$SECONDS running n rc
    prepare
    lock
    if all_running && running=$(cluster_ok); then
        log "already up and clustered (running nodes: $running); nothing to do"
        cmd_urls
        return 0
    fi
    if others_running; then
        # Some nodes run: each stopped one boots on its own, syncing with a running member.
        local order
        mapfile -t order < <(boot_order)
        for n in "${order[@]}"; do
            rc=0
            boot_node "$n" || rc=$?
            if ((rc != 0)); then
                FAILED+=("$n")
                CAUSES[$n]=$BOOT_CAUSE
            fi
        done
    else
        boot_stopped_cluster
    fi
    # A node that could not boot: forgotten, reset and joined again through a running member.
    for n in "${FAILED[@]}"; do
        rejoin_fresh "$n" "${CAUSES[$n]}"
    done
    local seed json joined=0
    seed=$(running_member) || die "up: no node is running"
    # One cluster_status (the CLI is slow to start on a busy machine): a node the seed lists as
    # running is clustered; any other one is checked from its own side and joined if need be.
    json=$(ctl "$seed" "$CLI_TIMEOUT" -q cluster_status --formatter json 2>/dev/null) \
        || die "up: 'rabbitmqctl cluster_status' on $(node_name "$seed") failed"
    for n in "${NODES[@]}"; do
        [[ $n == "$seed" ]] && continue
        jq -e --arg n "$(node_name "$n")" '.running_nodes // [] | index($n) != null' \
            <<<"$json" >/dev/null && continue
        ensure_member "$n" "$seed"
        joined=1
    done
    if ((joined == 1)); then
        json=$(ctl "$seed" "$CLI_TIMEOUT" -q cluster_status --formatter json 2>/dev/null) || json='{}'
    fi
    running=$(jq -r '.running_nodes // [] | .[]' <<<"$json" | sort | paste -sd' ')
    if [[ $running != "$(node_name 1) $(node_name 2) $(node_name 3)" ]]; then
        ctl "$seed" "$CLI_TIMEOUT" cluster_status >&2 || true
        die "up: $(node_name "$seed")'s cluster_status does not list 3 running nodes (it lists:" \
            "$running)"
    fi
    log "cluster_status on $(node_name "$seed"): running nodes: $running"
    if ((joined == 1)); then
        local qcs
        qcs=$(ctl "$seed" "$CLI_TIMEOUT" -q eval 'application:get_env(rabbit, quorum_cluster_size).' 2>&1) \
            || qcs="unknown ($qcs)"
        log "quorum_cluster_size: $qcs (new quorum queues get this many replicas; no policy needed)"
    fi
    log "up: 3-node cluster ready in $((SECONDS - begin))s; AMQP URLs:"
    cmd_urls
}

cmd_down() {
    need_root
    [[ -d $BASE ]] || {
        log "down: $BASE does not exist; nothing runs"
        return 0
    }
    lock
    local n
    for n in 3 2 1; do
        stop_node "$n"
    done
    log "down: all three nodes stopped; data kept in $BASE"
}

cmd_destroy() {
    need_root
    [[ $BASE == /* && $BASE != / ]] || die "refusing to delete '$BASE'"
    cmd_down
    [[ -d $BASE ]] || return 0
    local left
    left=$(orphans | tr '\n' ' ')
    if [[ -n $left ]]; then
        die "destroy: VMs started from $BASE still run without a pid file (pids: $left); stop" \
            "them first (kill $left), nothing was deleted"
    fi
    rm -rf -- "$BASE"
    log "destroy: removed $BASE"
}

cmd_kill() {
    need_root
    local n=$1 name pid
    name=$(node_name "$n")
    pid=$(node_pid "$n") || die "$name: not running (no live pid in $(pid_file "$n"))"
    log "$name: kill -9 $pid"
    kill -KILL "$pid"
    wait_gone "$pid" 10 || die "$name: pid $pid still alive 10s after SIGKILL"
    log "$name: killed"
    note_stopped "$n"
}

cmd_start() {
    need_root
    local n=$1 rc=0
    prepare
    lock
    boot_node "$n" || rc=$?
    case $rc in
        0) ;;
        1)
            # Died (after the feature-flag retries): reset and rejoin it when a member runs.
            if running_member "$n" >/dev/null; then
                rejoin_fresh "$n" "$BOOT_CAUSE"
            else
                log_tail "$n"
                die "$(node_name "$n") could not boot: $BOOT_CAUSE"
            fi
            ;;
        *)
            log_tail "$n"
            die "$(node_name "$n") did not finish booting: $BOOT_CAUSE (a restarted cluster node" \
                "waits for the other nodes it last saw; are they starting?)"
            ;;
    esac
}

cmd_stop() {
    need_root
    [[ -d $BASE ]] || {
        log "$(node_name "$1"): not running ($BASE does not exist)"
        return 0
    }
    lock
    stop_node "$1"
}

cmd_wait() {
    need_root
    local n=$1 limit=${2:-$TIMEOUT}
    [[ $limit =~ ^[0-9]+$ ]] || die "wait: SECONDS must be a whole number, got '$limit'"
    [[ -d $BASE ]] || die "$(node_name "$n"): $BASE does not exist (run 'up' first)"
    wait_node "$n" "$limit"
}

cmd_status() {
    local n rc=0 pid state port
    for n in "${NODES[@]}"; do
        port=$(amqp_port "$n")
        if pid=$(node_pid "$n"); then
            if tcp_open "$port"; then
                state=running
            else
                state=booting # process alive, AMQP not (yet or any more) accepting
                rc=1
            fi
        else
            pid=-
            state=stopped
            rc=1
        fi
        printf '%s %-8s pid=%-8s amqp=%s:%s mgmt=%s:%s prometheus=%s:%s\n' \
            "$(node_name "$n")" "$state" "$pid" "$HOST" "$port" "$HOST" "$(mgmt_port "$n")" \
            "$HOST" "$(prometheus_port "$n")"
    done
    return "$rc"
}

main() {
    local cmd=${1:-}
    case "$cmd" in
        up | down | destroy | status | urls)
            (($# == 1)) || {
                usage >&2
                exit 2
            }
            ;;
        kill | start | stop)
            (($# == 2)) || {
                usage >&2
                exit 2
            }
            check_node_arg "$2"
            ;;
        wait)
            (($# == 2 || $# == 3)) || {
                usage >&2
                exit 2
            }
            check_node_arg "$2"
            ;;
    esac
    case "$cmd" in
        -h | --help | help) ;;
        *) check_settings ;;
    esac
    case "$cmd" in
        up) cmd_up ;;
        down) cmd_down ;;
        destroy) cmd_destroy ;;
        kill) cmd_kill "$2" ;;
        start) cmd_start "$2" ;;
        stop) cmd_stop "$2" ;;
        wait) cmd_wait "$2" "${3:-}" ;;
        status) cmd_status ;;
        urls) cmd_urls ;;
        -h | --help | help) usage ;;
        *)
            usage >&2
            exit 2
            ;;
    esac
}

main "$@"
