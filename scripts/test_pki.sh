#!/usr/bin/env bash
# Makes a throwaway PKI for trying TLS and mutual TLS:
#   test_pki.sh DIR [SERVER_IP ...]
# DIR/ca.pem             the CA that signs everything below
# DIR/server.{pem,key}   the server's certificate, for localhost, 127.0.0.1
#                        and each SERVER_IP
# DIR/alice.{pem,key}    client certificates, subjects O=asarrayd test,CN=alice
# DIR/bob.{pem,key}      and CN=bob
# DIR/untrusted.pem      a CA that signed none of them
# Keys are P-256, valid for 2 days. For tests and trials only.
set -euo pipefail
dir=$1
shift
mkdir -p "$dir"
cd "$dir"
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
key ca.key
openssl req -x509 -new -key ca.key -days 2 -subj "/O=asarrayd test/CN=asarrayd test CA" \
  -out ca.pem
san="DNS:localhost,IP:127.0.0.1"
for ip in "$@"; do san="$san,IP:$ip"; done
sign() {  # name subject [extensions]
  key "$1.key"
  openssl req -new -key "$1.key" -subj "$2" -out "$1.csr"
  printf '%s\n' "${3:-basicConstraints=CA:FALSE}" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
    -extfile "$1.ext" -out "$1.pem" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
sign server "/O=asarrayd test/CN=asarrayd" "subjectAltName=$san"
sign alice "/O=asarrayd test/CN=alice" "extendedKeyUsage=clientAuth"
sign bob "/O=asarrayd test/CN=bob" "extendedKeyUsage=clientAuth"
key untrusted.key
openssl req -x509 -new -key untrusted.key -days 2 -subj "/CN=untrusted CA" -out untrusted.pem
rm -f ca.srl untrusted.key
chmod 600 ./*.key
