#!/usr/bin/env bash
# Bring up (or report on) the services Runlet's tests and demo need on a Debian 12 machine:
#   RabbitMQ   127.0.0.1:5672  guest/guest, plus the management plugin (127.0.0.1:15672) and
#              the Prometheus plugin (127.0.0.1:15692, what deploy/prometheus scrapes)
#   PostgreSQL 127.0.0.1:5432  trust auth (user postgres, no password)
#   Chromium   /usr/bin/chromium, the browser tests/browser drives (installed, never run here)
#
#   scripts/services.sh up      install what is missing, start what is stopped, check it answers
#   scripts/services.sh status  print the state; exit 0 when both services answer, 1 otherwise
#
# It is idempotent and never disruptive: a service that already answers is left alone; it never
# stops or restarts a service and never kills a process. Installing and starting need root.
# Without systemd as PID 1 it starts RabbitMQ with `rabbitmq-server -detached` and PostgreSQL
# with `pg_ctlcluster --skip-systemctl-redirect`.
#
# Environment: RUNLET_SERVICES_TIMEOUT  seconds to wait for a service to answer (default 120).
set -euo pipefail

# CI shells and `sudo` without -i may lack the sbin directories that hold the service tools.
PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
export DEBIAN_FRONTEND=noninteractive

readonly HOST=127.0.0.1
readonly AMQP_PORT=5672
readonly MGMT_PORT=15672
readonly PROM_PORT=15692
readonly PG_PORT=5432
readonly TIMEOUT="${RUNLET_SERVICES_TIMEOUT:-120}"
readonly CHROMIUM=/usr/bin/chromium

PG_INSTALLED_NOW=0   # set when this run installed PostgreSQL (then we may set its loopback auth)

log() { printf 'services: %s\n' "$*"; }
warn() { printf 'services: WARNING: %s\n' "$*" >&2; }
die() {
    printf 'services: ERROR: %s\n' "$*" >&2
    exit 1
}

usage() {
    cat <<'EOF'
usage: scripts/services.sh up|status

  up      ensure RabbitMQ (127.0.0.1:5672, management and Prometheus plugins on) and PostgreSQL
          (127.0.0.1:5432) are installed, running and reachable; never stops or restarts a
          running service
  status  print the state of both; exit 0 when both are reachable, 1 otherwise
EOF
}

# True when something accepts TCP connections on $HOST:$1.
tcp_open() {
    # shellcheck disable=SC2016  # $0 and $1 are expanded by the inner bash, on purpose
    timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$HOST" "$1" 2>/dev/null
}

need_root() {
    [[ $EUID -eq 0 ]] || die "$1 needs root: run this script as root (or with sudo)"
}

pkg_version() {
    local out
    # shellcheck disable=SC2016  # ${Status} and ${Version} are dpkg-query fields, not shell variables
    out=$(dpkg-query -W -f='${Status}|${Version}' "$1" 2>/dev/null) || return 1
    [[ $out == "install ok installed|"* ]] || return 1
    printf '%s\n' "${out#*|}"
}

rabbit_installed() { command -v rabbitmq-server >/dev/null 2>&1; }
pg_installed() {
    command -v pg_ctlcluster >/dev/null 2>&1 && compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null
}

# True when the local RabbitMQ node (the one rabbitmq-env.conf names) answers the CLI.
rabbit_ping() {
    timeout 30 rabbitmq-diagnostics -q --timeout 10 ping >/dev/null 2>&1
}

# Prints to stderr the end of the newest *.log in directory $1 and of a non-empty startup_err
# (where the Debian wrapper of rabbitmq-server writes), to explain a failed start.
log_tail() {
    local f
    f=$(find "$1" -maxdepth 1 -type f -name '*.log' -printf '%T@ %p\n' 2>/dev/null \
        | sort -rn | head -n 1 | cut -d' ' -f2-) || true
    for f in $f "$1/startup_err"; do
        if [[ -s $f ]]; then
            printf '\n--- last lines of %s ---\n' "$f" >&2
            tail -n 30 "$f" >&2 || true
        fi
    done
}

# wait_for NAME PORT TIMEOUT: poll until $HOST:PORT accepts connections, printing progress.
wait_for() {
    local name=$1 port=$2 limit=$3 start=$SECONDS next=5
    while ! tcp_open "$port"; do
        local waited=$((SECONDS - start))
        if ((waited >= limit)); then
            return 1
        fi
        if ((waited >= next)); then
            log "$name: still waiting for $HOST:$port (${waited}s of ${limit}s)"
            next=$((next + 5))
        fi
        sleep 1
    done
    log "$name: $HOST:$port accepts connections (after $((SECONDS - start))s)"
}

# ---------------------------------------------------------------------------------------------
# up

install_missing() {
    local missing=()
    if ! tcp_open "$AMQP_PORT" && ! rabbit_installed; then
        missing+=(rabbitmq-server)
    fi
    if ! tcp_open "$PG_PORT" && ! pg_installed; then
        missing+=(postgresql)
        PG_INSTALLED_NOW=1
    fi
    # the browser tests (tests/browser) drive Debian's Chromium; Playwright downloads nothing
    if [[ ! -x $CHROMIUM ]]; then
        missing+=(chromium)
    fi
    if ((${#missing[@]} == 0)); then
        return 0
    fi
    need_root "installing ${missing[*]}"
    log "not installed: ${missing[*]}; running: apt-get update && apt-get install -y ${missing[*]}"
    apt-get update || die "apt-get update failed (is a Debian mirror reachable?)"
    apt-get install -y "${missing[@]}" || die "apt-get install -y ${missing[*]} failed"
    log "installed: ${missing[*]}"
}

# Starts the node if it is down; does not wait (PostgreSQL starts meanwhile). Sets RABBIT_ACTION.
RABBIT_ACTION=none
start_rabbitmq() {
    if tcp_open "$AMQP_PORT"; then
        log "RabbitMQ: already running ($HOST:$AMQP_PORT answers), left alone"
        return 0
    fi
    rabbit_installed || die "RabbitMQ: rabbitmq-server is not on PATH even after installing it"
    if rabbit_ping; then
        log "RabbitMQ: the node is up but $HOST:$AMQP_PORT does not answer yet (still booting?);" \
            "waiting for it instead of starting another"
        RABBIT_ACTION=waiting
        return 0
    fi
    need_root "starting RabbitMQ"
    log "RabbitMQ: installed but stopped; starting it: rabbitmq-server -detached"
    rabbitmq-server -detached || {
        log_tail /var/log/rabbitmq
        die "RabbitMQ: 'rabbitmq-server -detached' failed"
    }
    RABBIT_ACTION=started
}

wait_rabbitmq() {
    [[ $RABBIT_ACTION != none ]] || return 0
    log "RabbitMQ: waiting up to ${TIMEOUT}s for $HOST:$AMQP_PORT"
    if ! wait_for RabbitMQ "$AMQP_PORT" "$TIMEOUT"; then
        log_tail /var/log/rabbitmq
        if rabbit_ping; then
            die "RabbitMQ: the node runs but $HOST:$AMQP_PORT does not answer after ${TIMEOUT}s" \
                "(is the app stopped? try 'rabbitmqctl start_app'; is the listener on another" \
                "address? see /etc/rabbitmq/rabbitmq.conf)"
        fi
        die "RabbitMQ: $HOST:$AMQP_PORT does not answer ${TIMEOUT}s after the start; see the log above"
    fi
}

# enable_rabbit_plugin ENABLED NAME LABEL CONSEQUENCE: enables plugin NAME unless ENABLED (the
# output of `rabbitmq-plugins list -e -m`) lists it. Returns 1, after a warning that says
# CONSEQUENCE, when enabling fails.
enable_rabbit_plugin() {
    local enabled=$1 name=$2 label=$3 consequence=$4
    if grep -qx "$name" <<<"$enabled"; then
        log "RabbitMQ: $label plugin already enabled"
        return 0
    fi
    log "RabbitMQ: enabling the $label plugin: rabbitmq-plugins enable $name"
    if ! timeout 120 rabbitmq-plugins enable "$name"; then
        warn "RabbitMQ: enabling the $label plugin failed; AMQP is unaffected, but $consequence"
        return 1
    fi
}

# Enables the management and Prometheus plugins on the running node (online changes: no
# restart). A failure here is a warning, not an error: RabbitMQ itself is up and the tests need
# only AMQP.
ensure_rabbit_plugins() {
    if ! command -v rabbitmq-plugins >/dev/null 2>&1; then
        warn "RabbitMQ: rabbitmq-plugins not found; cannot check the management and Prometheus" \
            "plugins"
        return 0
    fi
    if [[ $EUID -ne 0 ]]; then
        warn "RabbitMQ: not root, so the management and Prometheus plugins are not checked" \
            "(the CLI needs the node's Erlang cookie); run 'scripts/services.sh up' as root to" \
            "enable them"
        return 0
    fi
    local enabled
    if ! enabled=$(timeout 60 rabbitmq-plugins -q list -e -m 2>&1); then
        warn "RabbitMQ: 'rabbitmq-plugins list -e' failed, plugins left as they are:" \
            "$(tail -n 3 <<<"$enabled")"
        return 0
    fi
    local mgmt_ok=0 prom_ok=0
    enable_rabbit_plugin "$enabled" rabbitmq_management management \
        "anything that needs the management API (http://$HOST:$MGMT_PORT) will not work" \
        && mgmt_ok=1
    enable_rabbit_plugin "$enabled" rabbitmq_prometheus Prometheus \
        "RabbitMQ's own metrics (http://$HOST:$PROM_PORT/metrics) will not be served" \
        && prom_ok=1
    tcp_open "$AMQP_PORT" \
        || die "RabbitMQ: $HOST:$AMQP_PORT stopped answering after the plugin change; see the log" \
            "in /var/log/rabbitmq"
    if ((mgmt_ok)) && ! wait_for "RabbitMQ management" "$MGMT_PORT" 30; then
        warn "RabbitMQ: the management plugin is enabled but $HOST:$MGMT_PORT does not answer"
    fi
    if ((prom_ok)) && ! wait_for "RabbitMQ Prometheus" "$PROM_PORT" 30; then
        warn "RabbitMQ: the Prometheus plugin is enabled but $HOST:$PROM_PORT does not answer"
    fi
}

# Prints "VERSION CLUSTER STATUS" of the cluster configured on $PG_PORT, if any.
pg_cluster_on_port() {
    pg_lsclusters -h 2>/dev/null | awk -v port="$PG_PORT" '$3 == port { print $1, $2, $4; exit }'
}

start_postgres() {
    if tcp_open "$PG_PORT"; then
        log "PostgreSQL: already running ($HOST:$PG_PORT answers), left alone"
        return 0
    fi
    pg_installed || die "PostgreSQL: no server found (pg_ctlcluster, /usr/lib/postgresql/*/bin/postgres)"
    local cluster ver name state
    cluster=$(pg_cluster_on_port)
    if [[ -z $cluster ]]; then
        if [[ -n $(pg_lsclusters -h 2>/dev/null) ]]; then
            pg_lsclusters >&2 || true
            die "PostgreSQL: no cluster is configured on port $PG_PORT (clusters above)"
        fi
        need_root "creating a PostgreSQL cluster"
        ver=$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n 1)
        log "PostgreSQL: no cluster exists; creating one: pg_createcluster $ver main"
        pg_createcluster "$ver" main || die "PostgreSQL: pg_createcluster $ver main failed"
        cluster=$(pg_cluster_on_port)
        [[ -n $cluster ]] || die "PostgreSQL: the new cluster $ver/main is not on port $PG_PORT"
    fi
    read -r ver name state <<<"$cluster"
    if [[ $state == online* ]]; then
        log "PostgreSQL: cluster $ver/$name is online but $HOST:$PG_PORT does not answer yet; waiting"
    else
        need_root "starting PostgreSQL"
        log "PostgreSQL: cluster $ver/$name is $state; starting it:" \
            "pg_ctlcluster --skip-systemctl-redirect $ver $name start"
        pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" start || {
            log_tail /var/log/postgresql
            die "PostgreSQL: pg_ctlcluster $ver $name start failed"
        }
    fi
    if ! wait_for PostgreSQL "$PG_PORT" "$TIMEOUT"; then
        log_tail /var/log/postgresql
        die "PostgreSQL: $HOST:$PG_PORT does not answer after ${TIMEOUT}s (listen_addresses in" \
            "/etc/postgresql/$ver/$name/postgresql.conf?)"
    fi
}

# psql as postgres over TCP without a password; prints psql's error on failure.
pg_login_ok() {
    PGCONNECT_TIMEOUT=10 psql -h "$HOST" -p "$PG_PORT" -U postgres -d postgres -w -XAtq \
        -c 'select 1' >/dev/null
}

# The tests log in over TCP without a password (trust). A fresh Debian install asks for one, so
# when this run installed PostgreSQL it adds loopback trust rules; an existing setup is only checked.
ensure_pg_trust() {
    if ! command -v psql >/dev/null 2>&1; then
        warn "PostgreSQL: psql not found; cannot check the password-less login the tests use"
        return 0
    fi
    local err
    if err=$(pg_login_ok 2>&1); then
        log "PostgreSQL: user postgres logs in on $HOST:$PG_PORT without a password"
        return 0
    fi
    local cluster ver name
    cluster=$(pg_cluster_on_port)
    read -r ver name _ <<<"$cluster"
    local hba="/etc/postgresql/$ver/$name/pg_hba.conf"
    if ((PG_INSTALLED_NOW)) && [[ -n $cluster && -f $hba ]]; then
        log "PostgreSQL: fresh install asks for a password; adding loopback trust rules to $hba"
        local tmp
        tmp=$(mktemp)
        {
            echo '# Added by runlet scripts/services.sh: password-less loopback logins for development.'
            echo 'host    all             all             127.0.0.1/32            trust'
            echo 'host    all             all             ::1/128                 trust'
            cat "$hba"
        } >"$tmp"
        cat "$tmp" >"$hba" # keeps the file's owner and mode
        rm -f "$tmp"
        log "PostgreSQL: reloading the configuration: pg_ctlcluster $ver $name reload"
        pg_ctlcluster --skip-systemctl-redirect "$ver" "$name" reload \
            || die "PostgreSQL: pg_ctlcluster $ver $name reload failed"
        if err=$(pg_login_ok 2>&1); then
            log "PostgreSQL: user postgres now logs in on $HOST:$PG_PORT without a password"
            return 0
        fi
    fi
    die "PostgreSQL: runs, but user postgres cannot log in on $HOST:$PG_PORT without a password:" \
        "$err -- the tests need 'host all all 127.0.0.1/32 trust' in pg_hba.conf"
}

cmd_up() {
    install_missing
    start_rabbitmq
    start_postgres
    wait_rabbitmq
    ensure_rabbit_plugins
    ensure_pg_trust
    log "up: RabbitMQ on $HOST:$AMQP_PORT and PostgreSQL on $HOST:$PG_PORT are reachable;" \
        "Chromium at $CHROMIUM"
}

# ---------------------------------------------------------------------------------------------
# status

# One aligned "label: value" line of the status report.
row() { printf '  %-22s %s\n' "$1:" "$2"; }

cmd_status() {
    local rc=0 v enabled

    echo "RabbitMQ"
    if v=$(pkg_version rabbitmq-server); then
        row "package" "rabbitmq-server $v"
    elif rabbit_installed; then
        row "package" "installed (not from the Debian package)"
    else
        row "package" "not installed"
    fi
    if rabbit_installed; then
        if rabbit_ping; then
            row "node" "running"
        else
            row "node" "not answering the CLI (stopped, or no access to its cookie)"
        fi
    fi
    if tcp_open "$AMQP_PORT"; then
        row "AMQP $HOST:$AMQP_PORT" "reachable"
    else
        row "AMQP $HOST:$AMQP_PORT" "NOT reachable"
        rc=1
    fi
    if ! command -v rabbitmq-plugins >/dev/null 2>&1; then
        row "management plugin" "unknown (no rabbitmq-plugins)"
        row "Prometheus plugin" "unknown (no rabbitmq-plugins)"
    elif enabled=$(timeout 60 rabbitmq-plugins -q list -e -m 2>/dev/null); then
        if grep -qx 'rabbitmq_management' <<<"$enabled"; then
            row "management plugin" "enabled"
        else
            row "management plugin" "not enabled"
        fi
        if grep -qx 'rabbitmq_prometheus' <<<"$enabled"; then
            row "Prometheus plugin" "enabled"
        else
            row "Prometheus plugin" "not enabled"
        fi
    else
        row "management plugin" "unknown (rabbitmq-plugins failed)"
        row "Prometheus plugin" "unknown (rabbitmq-plugins failed)"
    fi
    if tcp_open "$MGMT_PORT"; then
        row "HTTP $HOST:$MGMT_PORT" "reachable"
    else
        row "HTTP $HOST:$MGMT_PORT" "not reachable"
    fi
    if tcp_open "$PROM_PORT"; then
        row "HTTP $HOST:$PROM_PORT" "reachable"
    else
        row "HTTP $HOST:$PROM_PORT" "not reachable"
    fi

    echo "PostgreSQL"
    if v=$(pkg_version postgresql); then
        row "package" "postgresql $v"
    elif pg_installed; then
        row "package" "installed (server found, no 'postgresql' package)"
    else
        row "package" "not installed"
    fi
    if command -v pg_lsclusters >/dev/null 2>&1; then
        local line
        while IFS= read -r line; do
            row "cluster" "$line"
        done < <(pg_lsclusters -h 2>/dev/null | awk '{ print $1 "/" $2 " port " $3 " " $4 }')
    fi
    if tcp_open "$PG_PORT"; then
        row "TCP $HOST:$PG_PORT" "reachable"
        if command -v psql >/dev/null 2>&1; then
            if pg_login_ok 2>/dev/null; then
                row "login" "postgres without a password: ok"
            else
                row "login" "postgres without a password: FAILS"
                rc=1
            fi
        fi
    else
        row "TCP $HOST:$PG_PORT" "NOT reachable"
        rc=1
    fi

    echo "Chromium (browser tests)"
    if [[ -x $CHROMIUM ]]; then
        row "browser" "$CHROMIUM"
    else
        row "browser" "NOT installed"
        rc=1
    fi
    return "$rc"
}

case "${1:-}" in
    up) cmd_up ;;
    status) cmd_status ;;
    -h | --help | help) usage ;;
    *)
        usage >&2
        exit 2
        ;;
esac
