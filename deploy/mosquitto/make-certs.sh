#!/usr/bin/env bash
# Certificates for the stations' Mosquitto broker, with openssl: a private CA (made on first
# use, then reused), the broker's server certificate and client certificates.
#
#   make-certs.sh [-d DIR] [-days N] server HOSTNAME [ALT_NAME...]
#   make-certs.sh [-d DIR] [-days N] client NAME
#
#   DIR (default ./certs) gets ca.crt + ca.key, server.crt + server.key, NAME.crt + NAME.key.
#   HOSTNAME and ALT_NAMEs become the server certificate's subjectAltName (DNS names or IP
#   addresses): every name the stations use in [mqtt] url = "mqtts://HOSTNAME:8883".
#   NAME is the client certificate's CN: the station id (or viewer/operator), which is also
#   the MQTT user name when the broker sets use_identity_as_username.
#
# Examples:
#   deploy/mosquitto/make-certs.sh -d deploy/compose/mosquitto/certs server labserver.example.org labserver 192.0.2.10
#   deploy/mosquitto/make-certs.sh -d deploy/compose/mosquitto/certs client lab-a
#
# Give every station ca.crt (and for mutual TLS its NAME.crt/NAME.key). Keep ca.key offline
# if you can: whoever has it can make certificates the broker trusts.
set -euo pipefail

dir=./certs
days=825          # leaf certificates; the CA gets ten years
usage() { sed -n '5,6p' "$0" | sed 's/^#   /usage: /' >&2; exit 2; }

while [ $# -gt 0 ]; do
    case "$1" in
        -d) dir=${2:?-d needs a directory}; shift 2 ;;
        -days) days=${2:?-days needs a number}; shift 2 ;;
        -h|--help) usage ;;
        *) break ;;
    esac
done
[ $# -ge 2 ] || usage
kind=$1; name=$2; shift 2
case "$kind" in server|client) ;; *) usage ;; esac
case "$name" in *[!A-Za-z0-9_.:-]*|"") echo "make-certs: bad name '$name'" >&2; exit 2 ;; esac

command -v openssl >/dev/null || { echo "make-certs: openssl is not installed" >&2; exit 1; }
mkdir -p "$dir"
umask 077
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)

if [ ! -f "$dir/ca.crt" ] || [ ! -f "$dir/ca.key" ]; then
    cat > "$tmp/ca.cnf" <<CNF
[req]
distinguished_name = dn
x509_extensions = v3_ca
prompt = no
[dn]
CN = LED station broker CA
[v3_ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
CNF
    openssl req -x509 "${ec[@]}" -config "$tmp/ca.cnf" -days 3650 \
        -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
    echo "make-certs: new CA $dir/ca.crt" >&2
fi

san=""
if [ "$kind" = server ]; then
    for n in "$name" "$@"; do
        if [[ $n =~ ^[0-9.]+$ || $n == *:* ]]; then san+="IP:$n,"; else san+="DNS:$n,"; fi
    done
    out=server
    eku=serverAuth
else
    [ $# -eq 0 ] || usage
    case "$name" in ca|server) echo "make-certs: a client may not be called '$name'" >&2; exit 2 ;; esac
    out=$name
    eku=clientAuth
fi
{
    echo "basicConstraints = critical, CA:FALSE"
    echo "keyUsage = critical, digitalSignature, keyEncipherment"
    echo "extendedKeyUsage = $eku"
    echo "subjectKeyIdentifier = hash"
    echo "authorityKeyIdentifier = keyid, issuer"
    [ -z "$san" ] || echo "subjectAltName = ${san%,}"
} > "$tmp/leaf.ext"

openssl req "${ec[@]}" -subj "/CN=$name" -keyout "$tmp/leaf.key" -out "$tmp/leaf.csr" 2>/dev/null
openssl x509 -req -in "$tmp/leaf.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days "$days" -extfile "$tmp/leaf.ext" \
    -out "$tmp/leaf.crt" 2>/dev/null
mv "$tmp/leaf.key" "$dir/$out.key"
mv "$tmp/leaf.crt" "$dir/$out.crt"
chmod 0644 "$dir/ca.crt" "$dir/$out.crt"
echo "make-certs: $dir/$out.crt ($eku${san:+, ${san%,}}) and $dir/$out.key" >&2
