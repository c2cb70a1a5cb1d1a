#!/bin/sh
# Runs once in the minio-init container of deploy/compose.yaml (image minio/mc), after MinIO
# answers: makes the bucket for the logs and the policy for devices. Safe to run again.
#
#   bucket  runlet-logs: private (no anonymous access); logs go to <user>/<node>/<job>.rlog
#   policy  runlet-device (deploy/minio/runlet-device-policy.json): a MinIO user may put, get
#           and head objects under its own name's prefix only; see deploy/minio.md
#
# Device accounts are made per Runlet user afterwards (deploy/minio.md), not here.
set -eu

user=$(cat /run/secrets/minio_root_user)
password=$(cat /run/secrets/minio_root_password)
# An alias in the environment, not on the command line (the values are hex: no URL quoting).
export MC_HOST_runlet="http://${user}:${password}@minio:9000"

mc mb --ignore-existing runlet/runlet-logs
mc anonymous set none runlet/runlet-logs
mc admin policy create runlet runlet-device /minio/runlet-device-policy.json
echo "minio-init: bucket runlet-logs and policy runlet-device ready"
