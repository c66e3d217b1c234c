#!/usr/bin/env bash
# Installs the Debian packages the test suite needs, only when missing.
set -euo pipefail
need=()
[ -x /usr/bin/chromium ] || need+=(chromium)
dpkg -s fonts-noto-color-emoji >/dev/null 2>&1 || need+=(fonts-noto-color-emoji)
command -v node >/dev/null 2>&1 || need+=(nodejs)
[ -x /usr/bin/python3 ] || need+=(python3)  # the sandbox runs python as an unprivileged uid that cannot read a python under /root
# a throwaway PostgreSQL for the tests that run on both databases (initdb + pg_ctl, run as `postgres`)
command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  echo "installing: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
