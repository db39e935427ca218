#!/usr/bin/env bash
# Fetch the Debian packages whose text scripts/build_demo_data.py reads.
#
#   bash scripts/install_demo_sources.sh            # download + extract (no R, nothing installed)
#   bash scripts/install_demo_sources.sh --system   # apt-get install them instead (pulls in R)
#
# Default: `apt-get download` each pinned .deb and unpack it with `dpkg-deb -x` into
# ${ADEPT_DEMO_SOURCES:-~/.cache/adept-demo-sources}/<package>/, writing the version to
# <package>/.deb-version. The two R packages would otherwise drag in r-base-core and ~50 other
# packages; only their data files are needed. Idempotent: a package already unpacked at the
# pinned version is skipped.
set -euo pipefail

PACKAGES=(
  "r-cran-janeaustenr=1.0.0-1"   # Jane Austen's novels (general domain)
  "r-bioc-go.db=3.16.0-1"        # Gene Ontology definitions (target domain + domain MC)
  "wordnet-base=1:3.0-37"        # WordNet 3.0 glosses (general MC)
)
DEST="${ADEPT_DEMO_SOURCES:-$HOME/.cache/adept-demo-sources}"

SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

updated=0
apt_update_once() {
  if [ "$updated" -eq 0 ]; then
    $SUDO apt-get update -qq
    updated=1
  fi
}

if [ "${1:-}" = "--system" ]; then
  names=()
  for spec in "${PACKAGES[@]}"; do names+=("${spec%%=*}"); done
  if dpkg-query -W -f='${Status}\n' "${names[@]}" 2>/dev/null | grep -qv 'install ok installed' \
     || [ "$(dpkg-query -W -f='${Status}\n' "${names[@]}" 2>/dev/null | wc -l)" -ne "${#names[@]}" ]; then
    apt_update_once
    $SUDO apt-get install -y --no-install-recommends "${PACKAGES[@]}" \
      || $SUDO apt-get install -y --no-install-recommends "${names[@]}"
  fi
  echo "installed system-wide: ${names[*]}"
  exit 0
fi

command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null \
  || { echo "error: needs apt-get and dpkg-deb (Debian/Ubuntu)" >&2; exit 2; }
mkdir -p "$DEST"

for spec in "${PACKAGES[@]}"; do
  name="${spec%%=*}"
  version="${spec#*=}"
  target="$DEST/$name"
  if [ -f "$target/.deb-version" ] && [ "$(cat "$target/.deb-version")" = "$version" ]; then
    echo "ok: $name $version already in $target"
    continue
  fi
  tmp="$(mktemp -d)"
  if [ "$(id -u)" -eq 0 ] && id _apt >/dev/null 2>&1; then chown _apt "$tmp"; fi  # apt's sandbox user
  if ! (cd "$tmp" && apt-get download -qq "$spec" 2>/dev/null); then
    apt_update_once
    if ! (cd "$tmp" && apt-get download -qq "$spec" 2>/dev/null); then
      echo "warning: $spec not available, taking the current $name (output may differ from data/demo)" >&2
      (cd "$tmp" && apt-get download -qq "$name")
    fi
  fi
  deb="$(ls "$tmp"/*.deb)"
  rm -rf "$target.partial"
  mkdir -p "$target.partial"
  dpkg-deb -x "$deb" "$target.partial"
  dpkg-deb -f "$deb" Version > "$target.partial/.deb-version"
  rm -rf "$target"
  mv "$target.partial" "$target"
  rm -rf "$tmp"
  echo "ok: $name $(cat "$target/.deb-version") unpacked into $target"
done
