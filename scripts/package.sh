#!/usr/bin/env bash
# Build the Debian package dist/convoy_VERSION_ARCH.deb from debian/ with
# dpkg-buildpackage (binary only, unsigned), in a scratch copy of the tree,
# then run lintian on it: any error fails.
#
# Installs what it needs first (scripts/install-deps.sh: debhelper, fakeroot,
# lintian, the -dev packages).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh >/dev/null
root=$(pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The tracked and untracked-but-not-ignored files, as they are now: no build
# directory, no earlier packaging leftovers.
mkdir "$work/convoy"
git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$work/convoy"

version=$(dpkg-parsechangelog -l debian/changelog -S Version)
arch=$(dpkg-architecture -qDEB_HOST_ARCH)
deb="convoy_${version}_${arch}.deb"

echo "package: building $deb"
(cd "$work/convoy" && dpkg-buildpackage -b -us -uc -j"$(nproc)" >"$work/build.log" 2>&1) \
    || { tail -50 "$work/build.log" >&2; echo "package: dpkg-buildpackage failed" >&2; exit 1; }

mkdir -p dist
rm -f dist/convoy_*.deb
cp "$work/$deb" dist/
echo "package: dist/$deb"

# lintian: errors fail the build; warnings are shown. It runs as an ordinary
# user when it can (it refuses some checks as root).
echo "package: lintian"
lintian_out=$(lintian --fail-on error --tag-display-limit 0 "dist/$deb" 2>&1) || {
    echo "$lintian_out" >&2
    echo "package: lintian found errors" >&2
    exit 1
}
[ -z "$lintian_out" ] || echo "$lintian_out"
echo "package: lintian: no errors"
