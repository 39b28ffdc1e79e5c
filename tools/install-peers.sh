#!/usr/bin/env bash
# tools/install-peers.sh - install the project's test peers, idempotently (Debian 12; the apt-get
# steps as root: run by root, or through sudo when a user runs it and something is missing).
#
#   tools/install-peers.sh            # build output in $PEERS, else $PEERS_DIR, else <repo>/.peers
#
# Installs (only what is missing; `apt-get update` runs only when something is installed):
#   dcmtk            storescu / storescp / echoscu / img2dcm / dcmdump / dcmdjpeg
#   dicom3tools      dciodvfy (DICOM IOD validator)
#   orthanc          a real PACS peer (REST, C-STORE both ways)
#   orthanc-dicomweb its DICOMweb plugin (QIDO/WADO/STOW)
#   gcc libc6-dev    to build the loopback-only bind shim
#   curl iproute2    (ss: the peers' listening sockets are checked to be loopback only)
#   nodejs npm       only when `node` is absent (for tools/install-fhir-validators.sh)
# Debian's orthanc package ships a service that would listen on every interface; it is kept
# from starting (a temporary /usr/sbin/policy-rc.d during the install; disabled on systemd).
# Then builds $PEERS/lib/bind-localhost.so from tools/bind-localhost.c (LD_PRELOAD shim that
# rewrites non-loopback binds to loopback) and runs tools/install-fhir-validators.sh if present.
# Starts nothing. Prints versions; exits non-zero if anything is missing.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
PEERS="${PEERS:-${PEERS_DIR:-$repo/.peers}}"
SHIM="$PEERS/lib/bind-localhost.so"
PLUGIN="/usr/share/orthanc/plugins/libOrthancDicomWeb.so"

log() { echo "install-peers: $*"; }
die() { echo "install-peers: $*" >&2; exit 1; }
# only the system steps run as root (through sudo for a user): what is built in $PEERS stays the user's
as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else die "need root (or sudo) to run: $*"
  fi
}

# ---------------------------------------------------------------- Debian packages
pkgs=(dcmtk dicom3tools orthanc orthanc-dicomweb gcc libc6-dev curl iproute2)
command -v node >/dev/null 2>&1 || pkgs+=(nodejs npm)

missing=()
# one dpkg-query for all: prints "name<TAB>status" for the installed ones
installed="$(dpkg-query -W -f='${Package}\t${db:Status-Abbrev}\n' "${pkgs[@]}" 2>/dev/null || true)"
for p in "${pkgs[@]}"; do
  printf '%s\n' "$installed" | grep -qE "^$p	ii" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || log "apt-get install through sudo (not root): ${missing[*]}"
  log "apt-get install ${missing[*]}"
  made_policy=0
  # set before the file is written: a failure or an interruption while writing it (a second sudo
  # prompt) must not leave a policy that blocks every service start on the host
  cleanup_policy() { if [ "$made_policy" = 1 ]; then as_root rm -f /usr/sbin/policy-rc.d || true; fi; }
  trap cleanup_policy EXIT
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    made_policy=1
    # 101 = "action not allowed": invoke-rc.d will not start the orthanc service
    printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null
    as_root chmod 755 /usr/sbin/policy-rc.d
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  cleanup_policy
  trap - EXIT
fi

# the orthanc package's own service must never run (it listens on all interfaces)
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  if systemctl is-enabled --quiet orthanc 2>/dev/null || systemctl is-active --quiet orthanc 2>/dev/null; then
    log "disabling Debian's orthanc service"
    # in a subshell: as_root's die (no sudo) must not end the script here, unheard (output to /dev/null)
    if ! (as_root systemctl disable --now orthanc) >/dev/null 2>&1; then
      echo "install-peers: WARNING: could not disable Debian's orthanc service (needs root or sudo):" \
           "it listens on every interface when started" >&2
    fi
  fi
fi
for pid in $(pgrep -x Orthanc 2>/dev/null || true); do
  if ! tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -q '^LD_PRELOAD=.*bind-localhost'; then
    echo "install-peers: WARNING: Orthanc pid $pid runs without the loopback shim (may listen on all interfaces)" >&2
  fi
done

# ---------------------------------------------------------------- loopback bind shim
mkdir -p "$PEERS/lib"
if [ ! -f "$SHIM" ] || [ "$here/bind-localhost.c" -nt "$SHIM" ]; then
  log "building $SHIM"
  gcc -shared -fPIC -O2 -Wall -Wextra -o "$SHIM.tmp" "$here/bind-localhost.c" -ldl
  mv -f "$SHIM.tmp" "$SHIM"
fi

# ---------------------------------------------------------------- FHIR validators (npm)
fhir_ok=1
if [ -x "$here/install-fhir-validators.sh" ] || [ -f "$here/install-fhir-validators.sh" ]; then
  bash "$here/install-fhir-validators.sh" || fhir_ok=0
fi

# ---------------------------------------------------------------- verify
ok=1
for b in storescu storescp echoscu img2dcm dcmdump dcmdjpeg dciodvfy Orthanc curl ss gcc; do
  command -v "$b" >/dev/null 2>&1 || { echo "install-peers: MISSING: $b" >&2; ok=0; }
done
[ -f "$PLUGIN" ] || { echo "install-peers: MISSING: $PLUGIN (orthanc-dicomweb)" >&2; ok=0; }
[ "$fhir_ok" = 1 ] || { echo "install-peers: install-fhir-validators.sh failed" >&2; ok=0; }
# the shim really rewrites a wildcard bind to loopback
if [ -f "$SHIM" ] && command -v python3 >/dev/null 2>&1; then
  got="$(LD_PRELOAD="$SHIM" python3 -c 'import socket; s = socket.socket(); s.bind(("0.0.0.0", 0)); print(s.getsockname()[0])' 2>&1 || true)"
  [ "$got" = "127.0.0.1" ] || { echo "install-peers: shim does not work (bind 0.0.0.0 -> '$got')" >&2; ok=0; }
elif [ ! -f "$SHIM" ]; then
  echo "install-peers: MISSING: $SHIM" >&2; ok=0
fi

echo "versions: $(dpkg-query -W -f='${Package} ${Version}; ' dcmtk dicom3tools orthanc orthanc-dicomweb 2>/dev/null)"
echo "shim: $SHIM"
[ "$ok" = 1 ] || die "incomplete"
log "peers ready (PEERS=$PEERS)"
