#!/usr/bin/env bash
# Fetch the third-party browser files the app serves into tracker/static/vendor/, pinned by
# version and sha256, with `npm pack` from the npm registry. The results are committed, so the
# Docker image and a fresh clone need no npm; run this only to change a pin.
#   scripts/vendor.sh          fetch every pinned file (needs npm and the registry)
#   scripts/vendor.sh --check  verify the committed files against the pins (no network; tested)
set -euo pipefail
cd "$(dirname "$0")/.."
VENDOR=tracker/static/vendor

# package@version, the file inside the package, the sha256 of that file.
PINS=(
  "lightweight-charts@5.2.1 dist/lightweight-charts.standalone.production.js e21cc5caa0226ef30bd8549c50b9ef926615f2a4ee6b4e486353477a55f598cf"
  "redoc@2.5.4 bundles/redoc.standalone.js dcaf76612bc4a3fbcc923a8966dee2f6146a5f32e5ce1b6f02dd60cbbf89500b"
)

sha256() { sha256sum "$1" | cut -d' ' -f1; }

check() {
  local status=0 spec file sum name dest
  for pin in "${PINS[@]}"; do
    read -r spec file sum <<<"$pin"
    name=${spec%@*}
    dest="$VENDOR/$name/$(basename "$file")"
    if [ ! -f "$dest" ] || [ "$(sha256 "$dest")" != "$sum" ]; then
      echo "$dest: missing or not $spec (sha256 $sum)" >&2
      status=1
    elif [ ! -f "$VENDOR/$name/LICENSE" ] || ! grep -qx "$spec $file $sum" "$VENDOR/$name/VERSION"; then
      echo "$VENDOR/$name: LICENSE or VERSION missing or stale" >&2
      status=1
    fi
  done
  return $status
}

fetch() {
  local spec file sum name package dest license
  work=$(mktemp -d)  # global: the EXIT trap runs after this function has returned
  trap 'rm -rf "$work"' EXIT
  for pin in "${PINS[@]}"; do
    read -r spec file sum <<<"$pin"
    name=${spec%@*}
    # npm checks the tarball against the registry's integrity hash; the pin checks the file.
    (cd "$work" && npm pack --silent "$spec" >"$name.tgz.name")
    mkdir -p "$work/$name"
    tar -xzf "$work/$(cat "$work/$name.tgz.name")" -C "$work/$name"
    package="$work/$name/package"
    if [ "$(sha256 "$package/$file")" != "$sum" ]; then
      echo "$spec $file: sha256 $(sha256 "$package/$file"), pinned $sum; nothing changed" >&2
      exit 1
    fi
    dest="$VENDOR/$name"
    rm -rf "$dest"
    mkdir -p "$dest"
    cp "$package/$file" "$package/LICENSE" "$dest/"
    # The licences of the code bundled into the file (webpack's extract), and a NOTICE if any.
    for extra in "$package/$file.LICENSE.txt" "$package/NOTICE"; do
      if [ -f "$extra" ]; then cp "$extra" "$dest/"; fi
    done
    license=$(node -p "require('$package/package.json').license")
    printf '%s %s %s\nlicence: %s\n' "$spec" "$file" "$sum" "$license" >"$dest/VERSION"
    echo "$dest: $spec ($license)"
  done
  check
}

case "${1:-}" in
  --check) check ;;
  "") fetch ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac
