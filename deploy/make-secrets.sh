#!/usr/bin/env bash
# Makes the secret files of the server stack (deploy/compose.yaml) in deploy/secrets/, each a
# random value on one line, and leaves existing ones alone: run it again at any time.
#
#   deploy/make-secrets.sh           make the missing files
#   deploy/make-secrets.sh --list    print which exist (never their contents)
#
# pg_password               PostgreSQL password of the runlet database user
# rabbitmq_admin_password   RabbitMQ administrator "admin" (management UI, `runlet user add`)
# rabbitmq_server_password  RabbitMQ account "runlet-server" the server logs in with
# minio_root_user           MinIO root user name
# minio_root_password       MinIO root password
# grafana_admin_password    Grafana "admin"
#
# Why the files are mode 0644 inside a 0700 folder: Docker Compose bind-mounts file secrets
# with the host file's owner and mode (it ignores uid/gid/mode for them), and the services run
# as their own users (postgres, rabbitmq, grafana, runlet uid 10001), so each file must be
# readable by any uid. The folder, readable by its owner only, keeps other host users out.
#
# The values are hexadecimal, so they need no quoting in URLs (MinIO's MC_HOST_ and the broker
# URLs embed them). Some are read only at first start: RabbitMQ's admin password, PostgreSQL's
# and Grafana's are set when their volume is new; to rotate one later, change it in the service
# too (rabbitmqctl change_password, ALTER ROLE, grafana cli admin reset-admin-password), then in
# the file. rabbitmq-init sets runlet-server's from its file at every `docker compose up`.
set -euo pipefail

dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/secrets"
names=(pg_password rabbitmq_admin_password rabbitmq_server_password minio_root_user
    minio_root_password grafana_admin_password)

random_hex() { od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'; }

if [[ ${1:-} == --list ]]; then
    for name in "${names[@]}"; do
        if [[ -s $dir/$name ]]; then echo "present  $dir/$name"; else echo "MISSING  $dir/$name"; fi
    done
    exit 0
elif [[ $# -gt 0 ]]; then
    echo "usage: $0 [--list]" >&2
    exit 2
fi

install -d -m 0700 "$dir"
chmod 0700 "$dir"
for name in "${names[@]}"; do
    file="$dir/$name"
    if [[ -s $file ]]; then
        echo "make-secrets: $file exists, kept"
        continue
    fi
    case $name in
        minio_root_user) value="runlet-root-$(random_hex 4)" ;;
        *) value="$(random_hex 24)" ;;
    esac
    tmp="$(mktemp "$dir/.$name.XXXXXX")"
    printf '%s\n' "$value" >"$tmp"
    chmod 0644 "$tmp"
    mv "$tmp" "$file"
    echo "make-secrets: $file made"
done
