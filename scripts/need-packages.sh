#!/usr/bin/env bash
# Installs the Debian packages whose programs are missing, so a bare machine (CI) and a
# developer's one run the same scripts. Arguments are PROGRAM:PACKAGE pairs; a program
# counts as present when it is on PATH or in /usr/sbin (nutcracker lives there, outside a
# non-root PATH). Used by scripts/test.sh and benches/compare.sh.
#
#   scripts/need-packages.sh redis-server:redis-server nutcracker:nutcracker
set -euo pipefail

need=()
for pair in "$@"; do
  prog=${pair%%:*} pkg=${pair#*:}
  # type -P: a program file, not a shell builtin (kill is both).
  type -P "$prog" >/dev/null 2>&1 || [ -x "/usr/sbin/$prog" ] || [ -x "/bin/$prog" ] || need+=("$pkg")
done
[ ${#need[@]} -eq 0 ] && exit 0
echo "installing: ${need[*]}" >&2
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
# Debian starts a system redis on 6379 after installing redis-server; tests never use it.
