#!/usr/bin/env bash
# make deb: build/dynscreen_<version>_<arch>.deb, then lintian on it.
#
# The package is built with debhelper (debian/) by dpkg-buildpackage in an out-of-tree
# copy of the sources (build/deb/dynscreen-<version>/: the files git tracks or would
# track), so the working tree stays clean; the Python dependencies come from PyPI
# (debian/rules). Missing build tools are installed from Debian first (as root).
# lintian's output is printed; the build fails on any error or warning lintian reports
# that debian/dynscreen.lintian-overrides does not explain.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "deb: $*"; }

tools=(debhelper dpkg-dev lintian gcc python3-dev python3-venv ca-certificates)
missing=()
for p in "${tools[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || { echo "deb: installing ${missing[*]} needs root: run 'sudo make deb'" >&2; exit 1; }
  say "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

version=$(dpkg-parsechangelog -S Version)
upstream=$(/usr/bin/python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
[ "$version" = "$upstream" ] || {
  echo "deb: debian/changelog says $version, pyproject.toml says $upstream: add a changelog entry" >&2
  exit 1
}
arch=$(dpkg-architecture -qDEB_HOST_ARCH)
out=build/deb
src=$out/dynscreen-$version
rm -rf "$out"; mkdir -p "$src"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
    [ -e "$f" ] && printf '%s\0' "$f"
  done | tar --null -T - -cf - | tar -C "$src" -xf -
else
  tar --exclude=./.venv --exclude=./build --exclude='*.so' --exclude=__pycache__ \
      --exclude='*.egg-info' -cf - . | tar -C "$src" -xf -
fi

say "building dynscreen $version for $arch in $src (log: $out/build.log)"
start=$SECONDS
if ! (cd "$src" && nice -n 10 dpkg-buildpackage -b -us -uc) > "$out/build.log" 2>&1; then
  tail -30 "$out/build.log" >&2
  echo "deb: dpkg-buildpackage failed (log: $out/build.log)" >&2
  exit 1
fi
deb=build/dynscreen_${version}_${arch}.deb
mv "$out/dynscreen_${version}_${arch}.deb" "$deb"
say "built $deb in $((SECONDS - start))s ($(du -h "$deb" | cut -f1))"

say "lintian $deb"
# --fail-on warning: an unexplained warning fails the build like an error does.
if ! lintian --fail-on error,warning --display-info "$deb"; then
  echo "deb: lintian found errors or unexplained warnings (above)" >&2
  exit 1
fi
say "lintian: no errors, no unexplained warnings"
