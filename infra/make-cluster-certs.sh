#!/usr/bin/env bash
# Makes the TLS credentials of an expert cluster with openssl: a cluster CA and one certificate per host (or role)
# that the CA signed. Every process of the cluster (coordinators, workers) gets its own certificate + key and the CA
# bundle; a peer is accepted when its certificate chains to that CA (host names are not checked: see
# docs/OPERATIONS.md, "Security").
#
#   infra/make-cluster-certs.sh OUT_DIR NAME[=SAN,SAN...] [NAME[=SAN...] ...]
#
#   OUT_DIR/ca.pem            the CA certificate: give it to every process (Tls:CaPath, --tls-ca)
#   OUT_DIR/ca.key            the CA's private key: keep it OFF the cluster hosts (needed only to sign and rotate)
#   OUT_DIR/NAME.pem, .key    one process's certificate and key (Tls:CertificatePath / Tls:KeyPath, --tls-cert / --tls-key)
#
# SANs are IP addresses or DNS names (recorded for operators and other tools; the cluster itself does not check them).
# Reusing OUT_DIR keeps an existing CA (to add hosts or renew their certificates) unless ROTATE_CA=1.
# Lifetimes: CA_DAYS (default 825), CERT_DAYS (default 90). Example:
#   infra/make-cluster-certs.sh /etc/distributed/pki coordinator=10.0.0.10 gpu12=10.0.0.12 gpu13=10.0.0.13
set -euo pipefail

if [ $# -lt 2 ]; then
  sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
command -v openssl >/dev/null || { echo "error: openssl is required" >&2; exit 1; }

out=$1; shift
ca_days=${CA_DAYS:-825}
cert_days=${CERT_DAYS:-90}
umask 077
mkdir -p "$out"

if [ "${ROTATE_CA:-0}" = 1 ] || [ ! -f "$out/ca.pem" ] || [ ! -f "$out/ca.key" ]; then
  openssl ecparam -name prime256v1 -genkey -noout -out "$out/ca.key"
  openssl req -x509 -new -key "$out/ca.key" -sha256 -days "$ca_days" -subj "/CN=distributed expert cluster CA" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$out/ca.pem"
  echo "made a new cluster CA: $out/ca.pem (key $out/ca.key; keep it off the cluster hosts)"
fi

for spec in "$@"; do
  name=${spec%%=*}
  case "$name" in
    ''|*/*|.*) echo "error: bad certificate name '$name'" >&2; exit 2 ;;
  esac
  sans="DNS:$name"
  if [ "$spec" != "$name" ]; then
    IFS=',' read -ra list <<< "${spec#*=}"
    for s in "${list[@]}"; do
      if [[ "$s" =~ ^[0-9.]+$ || "$s" == *:* ]]; then sans="$sans,IP:$s"; else sans="$sans,DNS:$s"; fi
    done
  fi
  openssl ecparam -name prime256v1 -genkey -noout -out "$out/$name.key.tmp"
  openssl pkcs8 -topk8 -nocrypt -in "$out/$name.key.tmp" -out "$out/$name.key"
  rm -f "$out/$name.key.tmp"
  openssl req -new -key "$out/$name.key" -subj "/CN=$name" -out "$out/$name.csr"
  openssl x509 -req -in "$out/$name.csr" -CA "$out/ca.pem" -CAkey "$out/ca.key" -CAcreateserial -sha256 -days "$cert_days" \
    -extfile <(printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyAgreement\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=%s\n' "$sans") \
    -out "$out/$name.pem" 2>/dev/null
  rm -f "$out/$name.csr"
  echo "$name: $out/$name.pem + $out/$name.key ($sans, $cert_days days)"
done
