#!/usr/bin/env bash
# Install the system packages Keyturn needs, only when missing (Debian/Ubuntu, apt-get).
#   scripts/system-deps.sh build  -> headers to build python-ldap (libldap2-dev, libsasl2-dev)
#   scripts/system-deps.sh demo   -> build + OpenSSH server/client + OpenLDAP slapd/ldap-utils
#                                    + Prometheus Alertmanager
#   scripts/system-deps.sh test   -> demo + PostgreSQL server binaries (throwaway clusters)
set -euo pipefail
mode=${1:-test}
need=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
have_pkg libldap2-dev || need+=(libldap2-dev)
have_pkg libsasl2-dev || need+=(libsasl2-dev)
if [ "$mode" = demo ] || [ "$mode" = test ]; then
  [ -x /usr/sbin/sshd ] || need+=(openssh-server)
  { command -v ssh >/dev/null && command -v ssh-keygen >/dev/null; } || need+=(openssh-client)
  [ -x /usr/sbin/slapd ] || need+=(slapd)
  command -v ldapsearch >/dev/null || need+=(ldap-utils)
  [ -x /usr/bin/prometheus-alertmanager ] || need+=(prometheus-alertmanager)
fi
if [ "$mode" = test ]; then
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
fi
[ ${#need[@]} -eq 0 ] && exit 0
echo "installing system packages: ${need[*]}" >&2
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
# slapd must not create and start a system directory of its own: the demo and the tests run
# throwaway servers from generated configurations.
echo "slapd slapd/no_configuration boolean true" | $sudo debconf-set-selections
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
