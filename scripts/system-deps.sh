#!/usr/bin/env bash
# Install the system packages Keyturn's demo and tests need, only when missing.
#   scripts/system-deps.sh demo   -> OpenSSH server and client
#   scripts/system-deps.sh test   -> the above + PostgreSQL server binaries (throwaway clusters)
set -euo pipefail
mode=${1:-test}
need=()
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
{ command -v ssh >/dev/null && command -v ssh-keygen >/dev/null; } || need+=(openssh-client)
if [ "$mode" = test ]; then
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
fi
[ ${#need[@]} -eq 0 ] && exit 0
echo "installing system packages: ${need[*]}" >&2
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
