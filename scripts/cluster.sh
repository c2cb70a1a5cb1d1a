#!/usr/bin/env bash
# A real 3-node RabbitMQ cluster on this machine, loopback only, for Runlet's failure-injection
# tests (tests/reliability). Recipe: FACTS.md §3.1 ("Three nodes on ONE machine"), shared notes.
#
#   node         AMQP             management        Prometheus        Erlang distribution
#   c1@localhost 127.0.0.1:5701   127.0.0.1:15701   127.0.0.1:15791   127.0.0.1:25701
#   c2@localhost 127.0.0.1:5702   127.0.0.1:15702   127.0.0.1:15792   127.0.0.1:25702
#   c3@localhost 127.0.0.1:5703   127.0.0.1:15703   127.0.0.1:15793   127.0.0.1:25703
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
# The machine's own RabbitMQ node (rabbit@localhost on 5672/25672) is never touched; the nodes
# share its epmd (4369), which is fine. Everything lives in $RUNLET_CLUSTER_DIR (default
# /tmp/runlet-cluster): home/.erlang.cookie (shared by the nodes and the CLI), n1..n3/{mnesia,log,
# pid,rabbitmq.conf,enabled_plugins}. Only processes named by the pid files in that folder (and
# checked to be that node's Erlang VM) are ever signalled. Must run as root (FACTS §3.1).
#
# Environment: RUNLET_CLUSTER_DIR      the cluster folder (default /tmp/runlet-cluster)
#              RUNLET_CLUSTER_TIMEOUT  seconds to wait for one node to boot or stop (default 120)
set -euo pipefail

readonly BASE="${RUNLET_CLUSTER_DIR:-/tmp/runlet-cluster}"
readonly TIMEOUT="${RUNLET_CLUSTER_TIMEOUT:-120}"
readonly BIN=/usr/lib/rabbitmq/bin
readonly HOST=127.0.0.1
readonly NODES=(1 2 3)
readonly CLI_TIMEOUT=60 # bound for one quick CLI call (the CLI itself needs ~1-2 s to start)

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

  up       start c1..c3@localhost (AMQP 127.0.0.1:5701..5703) and form the cluster; idempotent
  down     stop all three (graceful, then by pid file); data is kept
  destroy  down, then delete the cluster folder ($RUNLET_CLUSTER_DIR, default /tmp/runlet-cluster)
  kill N   kill -9 node N
  start N  start node N and wait until it runs (it rejoins the cluster by itself)
  stop N   stop node N gracefully
  wait N   wait until node N has booted
  status   state, pid and ports of each node; exit 0 only when all three are running
  urls     print the three AMQP URLs, one per line
EOF
}

# ---------------------------------------------------------------------------------------------
# per-node names and environment

node_name() { printf 'c%s@localhost\n' "$1"; }
node_dir() { printf '%s/n%s\n' "$BASE" "$1"; }
pid_file() { printf '%s/n%s/pid\n' "$BASE" "$1"; }
amqp_port() { printf '%s\n' $((5700 + $1)); }
url() { printf 'amqp://guest:guest@%s:%s/\n' "$HOST" "$(amqp_port "$1")"; }

# Exports the environment of node $1 (FACTS §3.1) into the current (sub)shell; both the server
# and the CLI calls run with it, so they share HOME and thus the Erlang cookie.
node_env() {
    local n=$1 dir
    dir=$(node_dir "$n")
    export HOME="$BASE/home"
    export RABBITMQ_NODENAME="c$n@localhost"
    export RABBITMQ_NODE_IP_ADDRESS=$HOST
    export RABBITMQ_NODE_PORT=$((5700 + n))
    export RABBITMQ_DIST_PORT=$((25700 + n))
    export RABBITMQ_MNESIA_BASE="$dir/mnesia"
    export RABBITMQ_LOG_BASE="$dir/log"
    export RABBITMQ_PID_FILE="$dir/pid"
    export RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf"
    export RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins"
    export RABBITMQ_CONF_ENV_FILE="$BASE/empty-env.conf"
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
}

# ctl N SECONDS ARGS...: rabbitmqctl against node N, bounded by SECONDS.
ctl() {
    local n=$1 limit=$2
    shift 2
    (
        node_env "$n"
        timeout "$limit" "$BIN/rabbitmqctl" -n "$(node_name "$n")" "$@"
    )
}

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
    tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qxF "RABBITMQ_PID_FILE=$(pid_file "$n")"
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
    local env pid
    for env in /proc/[0-9]*/environ; do
        pid=${env#/proc/}
        pid=${pid%/environ}
        [[ $(cat "/proc/$pid/comm" 2>/dev/null) == beam* ]] || continue
        tr '\0' '\n' <"$env" 2>/dev/null | grep -q "^RABBITMQ_PID_FILE=$BASE/n[123]/pid\$" || continue
        local n
        for n in "${NODES[@]}"; do
            [[ $(node_pid "$n" 2>/dev/null) == "$pid" ]] && continue 2
        done
        printf '%s\n' "$pid"
    done
}

# Prints to stderr the end of node $1's log and of its startup output, to explain a failure.
log_tail() {
    local dir f
    dir=$(node_dir "$1")
    for f in "$dir/log/$(node_name "$1").log" "$dir/log/startup.out"; do
        if [[ -s $f ]]; then
            printf '\n--- last lines of %s ---\n' "$f" >&2
            tail -n 15 "$f" >&2 || true
        fi
    done
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
    [[ $BASE == /* ]] || die "RUNLET_CLUSTER_DIR must be an absolute path, got '$BASE'"
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
        write_if_changed "$dir/rabbitmq.conf" "listeners.tcp.default = $HOST:$((5700 + n))
management.tcp.port = $((15700 + n))
management.tcp.ip = $HOST
prometheus.tcp.port = $((15790 + n))
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
        return 0
    fi
    if is_node_process "$pid" "$n"; then
        log "$name: graceful stop failed or timed out; sending SIGTERM to pid $pid"
        kill -TERM "$pid" 2>/dev/null || true
        if ! wait_gone "$pid" 30 && is_node_process "$pid" "$n"; then
            log "$name: still alive; sending SIGKILL to pid $pid"
            kill -KILL "$pid" 2>/dev/null || true
            wait_gone "$pid" 10 || die "$name: pid $pid survived SIGKILL"
        fi
    fi
    rm -f "$(pid_file "$n")"
    log "$name: stopped"
}

# The JSON list $2 ("running_nodes", "disk_nodes") of node $1's cluster_status, one node a line.
cluster_list() {
    local json
    json=$(ctl "$1" "$CLI_TIMEOUT" -q cluster_status --formatter json 2>/dev/null) || return 1
    jq -r --arg k "$2" '.[$k] // [] | .[]' <<<"$json"
}

# Joins node N (2 or 3) to c1 unless its cluster_status already lists c1.
ensure_member() {
    local n=$1 name members
    name=$(node_name "$n")
    members=$(cluster_list "$n" disk_nodes) || die "$name: 'rabbitmqctl cluster_status' failed"
    if grep -qxF c1@localhost <<<"$members"; then
        log "$name: already a member of c1@localhost's cluster"
        return 0
    fi
    log "$name: joining c1@localhost (stop_app; reset; join_cluster c1@localhost; start_app)"
    local step out
    for step in stop_app reset "join_cluster c1@localhost" start_app; do
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

# True when c1's cluster_status lists c1, c2 and c3 as running; prints them.
cluster_ok() {
    local running
    running=$(cluster_list 1 running_nodes) || return 1
    running=$(sort <<<"$running" | paste -sd' ')
    printf '%s\n' "$running"
    [[ $running == "c1@localhost c2@localhost c3@localhost" ]]
}

cmd_urls() {
    local n
    for n in "${NODES[@]}"; do url "$n"; done
}

cmd_up() {
    need_root
    local begin=$SECONDS running
    prepare
    lock
    if all_running && running=$(cluster_ok); then
        log "already up and clustered (running nodes: $running); nothing to do"
        cmd_urls
        return 0
    fi
    # Start every stopped node first and only then wait: a restarted cluster node waits for the
    # other nodes it last saw before it finishes booting (FACTS §3.1).
    local n
    for n in "${NODES[@]}"; do
        start_node "$n" || true
    done
    local pids=() failed=0
    for n in "${NODES[@]}"; do
        wait_node "$n" "$TIMEOUT" &
        pids+=($!)
    done
    for n in "${!pids[@]}"; do
        wait "${pids[$n]}" || failed=1
    done
    ((failed == 0)) || die "up: not every node booted; see above"
    ensure_member 2
    ensure_member 3
    if ! running=$(cluster_ok); then
        ctl 1 "$CLI_TIMEOUT" cluster_status >&2 || true
        die "up: c1@localhost's cluster_status does not list 3 running nodes (it lists: $running)"
    fi
    log "cluster_status on c1@localhost: running nodes: $running"
    local qcs
    qcs=$(ctl 1 "$CLI_TIMEOUT" -q eval 'application:get_env(rabbit, quorum_cluster_size).' 2>&1) \
        || qcs="unknown ($qcs)"
    log "quorum_cluster_size: $qcs (new quorum queues get this many replicas; no policy needed)"
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
}

cmd_start() {
    need_root
    local n=$1
    prepare
    lock
    start_node "$n" || true
    wait_node "$n" "$TIMEOUT"
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
            "$(node_name "$n")" "$state" "$pid" "$HOST" "$port" "$HOST" $((15700 + n)) \
            "$HOST" $((15790 + n))
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
