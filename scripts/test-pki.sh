#!/usr/bin/env bash
# A throwaway PKI for measuring and testing over TLS: an EC P-256 CA (ca.pem, ca.key) and a
# server certificate for localhost and 127.0.0.1 (server.pem, server.key) signed by it,
# valid for two days, made with Debian's openssl in DIR. Readable by all (a broker that
# drops root to its own user still reads them).
#
#   scripts/test-pki.sh DIR [CA-NAME]
set -euo pipefail
dir=$1 name=${2:-midge test CA}
cd "$dir"
{
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key \
    -out ca.pem -subj "/CN=$name" -days 2
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout server.key \
    -out server.csr -subj "/CN=localhost"
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >ext
  openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
    -out server.pem -days 2 -extfile ext
} 2>/dev/null
chmod 644 ./*
