#!/usr/bin/env bash
# Install, upgrade and purge the Debian package in a scratch root, and run
# the installed convoyd there: tests/package/test-package.sh dist/convoy_*.deb
#
# The scratch root is a private mount namespace whose / is an overlay on the
# machine's own / (changes go to a tmpfs), with a private network namespace
# (loopback only) and pid namespace: dpkg, adduser and the daemon act on it
# as on a real Debian 12 system, and the machine's /etc, /var and port 25
# never change. Needs root, unshare(1) and overlayfs.
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 PACKAGE.deb" >&2; exit 2; }
deb=$(realpath "$1")
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
[ "$(id -u)" -eq 0 ] || { echo "test-package: needs root" >&2; exit 1; }

echo "test-package: the unit's systemd-analyze security exposure"
exposure=$(systemd-analyze security --offline=yes "$top/debian/convoy.service" 2>/dev/null \
    | sed -n 's/.*Overall exposure level for convoy.service: \([0-9.]*\).*/\1/p')
echo "  $exposure"
awk -v e="$exposure" 'BEGIN { exit !(e != "" && e <= 2.0) }' \
    || { echo "test-package: exposure '$exposure' is over 2.0" >&2; exit 1; }

scratch=$(mktemp -d /tmp/convoy-pkg.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
cp "$deb" "$scratch/convoy.deb"
cp "$here/service_check.py" "$top/tests/integration/sink.py" "$scratch/"

# Everything below runs in the new namespaces; the chroot sees the overlay.
unshare --mount --net --pid --fork --propagation private bash -euo pipefail -c '
scratch=$1
root=$scratch/root
mkdir -p "$root"
mount -t tmpfs tmpfs "$root"
mkdir -p "$root/u" "$root/w" "$root/m"
mount -t overlay overlay -o "lowerdir=/,upperdir=$root/u,workdir=$root/w" "$root/m"
r=$root/m
mount -t proc proc "$r/proc"
mount --rbind /dev "$r/dev"
mount -t tmpfs tmpfs "$r/run"
mount -t tmpfs tmpfs "$r/tmp"
mkdir -p "$r/tmp/t"
cp "$scratch/convoy.deb" "$scratch/service_check.py" "$scratch/sink.py" "$r/tmp/t/"
ip link set lo up
chroot "$r" /bin/bash -euo pipefail -c "
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8
fail() { echo \"test-package: FAIL: \$*\" >&2; exit 1; }
if dpkg-query -W convoy >/dev/null 2>&1 || getent passwd convoy >/dev/null; then
    fail \"this machine already has a convoy package or user; the test needs a machine without\"
fi

echo test-package: install
dpkg -i /tmp/t/convoy.deb
[ -x /usr/sbin/convoyd ] && [ -x /usr/sbin/convoyctl ] || fail programs
getent passwd convoy >/dev/null || fail \"no convoy user\"
getent group convoy >/dev/null || fail \"no convoy group\"
[ \"\$(stat -c %U:%G:%a /var/spool/convoy)\" = convoy:convoy:750 ] || fail \"spool: \$(stat -c %U:%G:%a /var/spool/convoy)\"
dpkg-query -W -f=\"\\\${Conffiles}\" convoy | grep -q \"/etc/convoy/convoy.conf \" || fail \"convoy.conf is not a conffile\"
grep -q \"^mail_owner = convoy\$\" /etc/convoy/convoy.conf || fail \"mail_owner\"
[ -f /lib/systemd/system/convoy.service ] || fail \"no unit\"
[ -L /etc/systemd/system/multi-user.target.wants/convoy.service ] || fail \"unit not enabled\"
/usr/sbin/convoyd --check-config -c /etc/convoy/convoy.conf
for page in convoyd convoyctl convoy.conf; do
    man -w \"\$page\" >/dev/null || fail \"man \$page: not found\"
done
out=\$(MANWIDTH=80 man --warnings convoyd 2>&1 >/dev/null) || fail \"man convoyd\"
[ -z \"\$out\" ] || fail \"man convoyd warns: \$out\"
MANWIDTH=80 man convoyd 2>/dev/null | grep -q \"convoyd - the Convoy mail relay daemon\" || fail \"man convoyd text\"

echo test-package: the installed daemon on port 25
/usr/bin/python3 /tmp/t/service_check.py root unit

echo test-package: convoyctl as root leaves nothing of roots in the spool
convoyctl queue list >/dev/null
[ -z \"\$(find /var/spool/convoy -uid 0)\" ] || fail \"root files: \$(find /var/spool/convoy -uid 0)\"

echo test-package: upgrade keeps a changed conffile and the queue
echo \"# changed by the operator\" >> /etc/convoy/convoy.conf
ls /var/spool/convoy/queue.lmdb >/dev/null || fail \"no queue after a run\"
dpkg -i /tmp/t/convoy.deb
grep -q \"changed by the operator\" /etc/convoy/convoy.conf || fail \"upgrade replaced the conffile\"
[ -f /var/spool/convoy/queue.lmdb ] || fail \"upgrade lost the queue\"
[ \"\$(stat -c %U /var/spool/convoy)\" = convoy ] || fail \"spool owner after upgrade\"

echo test-package: remove, then purge
dpkg -r convoy
[ ! -e /usr/sbin/convoyd ] || fail \"convoyd left after remove\"
[ -f /etc/convoy/convoy.conf ] || fail \"remove took the conffile\"
dpkg --purge convoy
[ ! -e /etc/convoy ] || fail \"/etc/convoy left after purge\"
[ ! -e /var/spool/convoy ] || fail \"/var/spool/convoy left after purge\"
echo test-package: all checks passed
"
' _ "$scratch"
