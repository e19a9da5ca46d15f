#!/usr/bin/env bash
# testssl.sh against Palisade's own TLS listener (rustls, server.tls), with
# a throw-away self-signed certificate. Fails on any finding rated MEDIUM
# or worse, except the ones that only say the test certificate is
# self-signed (listed below).
set -euo pipefail
cd "$(dirname "$0")/../.."
source .ci/lib/palisade.bash

if ! command -v testssl >/dev/null; then
  timeout 600 apt-get update -qq
  DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq testssl.sh >/dev/null
fi

tmp=$(mktemp -d)
trap 'stop_palisade; rm -rf "$tmp"' EXIT

build_palisade
mkdir "$tmp/server"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 90 \
  -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$tmp/server/key.pem" -out "$tmp/server/cert.pem" 2>/dev/null
start_palisade "$tmp/server" \
  PALISADE_SERVER__TLS__CERT_FILE="$tmp/server/cert.pem" PALISADE_SERVER__TLS__KEY_FILE="$tmp/server/key.pem"
case "$PALISADE_URL" in https://*) ;; *) echo "expected TLS, got $PALISADE_URL" >&2; exit 1 ;; esac
echo "testssl against $PALISADE_URL"

# Everything but the client simulations (dozens of handshakes that tell
# compatibility, not security); no DNS and no fetching of revocation data.
status=0
timeout 600 testssl --quiet --color 0 --warnings off --nodns none \
  --protocols --std --server-defaults --server-preference --each-cipher --fs \
  --headers --vulnerable \
  --jsonfile "$tmp/testssl.json" "$PALISADE_URL" >"$tmp/testssl.log" 2>&1 || status=$?
# testssl's exit status counts findings of every severity; the JSON decides.
if [ ! -s "$tmp/testssl.json" ]; then
  echo "testssl wrote no results (exit $status):" >&2
  cat "$tmp/testssl.log" >&2
  exit 1
fi

python3 - "$tmp/testssl.json" <<'PY'
import json, sys

# Findings that only describe the throw-away certificate of this test, not
# the server: self-signed, so no chain of trust and no revocation
# information (an operator's certificate comes from a CA with both).
CERT_OF_THIS_TEST = {
    "cert_chain_of_trust",
    "cert_trust",
    "cert_revocation",
    "cert_crlDistributionPoints",
    "cert_ocspURL",
    "OCSP_stapling",
    "cert_mustStapleExtension",
    "DNS_CAArecord",
}
RANK = {"OK": 0, "INFO": 0, "LOW": 1, "MEDIUM": 2, "HIGH": 3, "CRITICAL": 4}

findings = json.load(open(sys.argv[1]))
if isinstance(findings, dict):
    findings = findings.get("scanResult", findings)
bad, waived = [], []
for f in findings:
    sev = f.get("severity", "INFO")
    if sev in ("WARN", "FATAL", "DEBUG") or RANK.get(sev, 0) < RANK["MEDIUM"]:
        if sev in ("WARN", "FATAL", "LOW"):
            print(f"note, {sev}: {f.get('id')}: {f.get('finding')}")
        continue
    base = f.get("id", "").split(" ")[0]
    (waived if base in CERT_OF_THIS_TEST else bad).append(f)
for f in waived:
    print(f"waived (test certificate): {f['severity']} {f['id']}: {f.get('finding')}")
for f in bad:
    print(f"FINDING {f['severity']} {f['id']}: {f.get('finding')}")
ran = sum(1 for f in findings if f.get("severity") not in ("WARN", "FATAL", "DEBUG"))
if any(f.get("severity") == "FATAL" for f in findings) or ran < 20:
    sys.exit(f"testssl did not complete ({ran} results)")
if bad:
    sys.exit(f"{len(bad)} TLS finding(s) rated MEDIUM or worse")
print(f"no TLS finding rated MEDIUM or worse ({ran} results, {len(waived)} waived for the test certificate)")
PY
