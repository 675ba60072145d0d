#!/usr/bin/env bash
# Called by scripts/test: tests/test_html_report.py opens the HTML report in a real headless
# browser, so Debian's Chromium and its WebDriver must be on the machine. Installs what is
# missing from Debian's packages, quietly; does nothing (in a few milliseconds) when both are
# already there.
set -euo pipefail

missing=()
[ -x /usr/bin/chromium ] || command -v chromium >/dev/null 2>&1 || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || command -v chromedriver >/dev/null 2>&1 \
  || missing+=(chromium-driver)
[ "${#missing[@]}" -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "The HTML report's browser test needs ${missing[*]} (Debian packages) and this machine" \
    "has no apt-get: install Chromium and its chromedriver by hand (on PATH)." >&2
  exit 2
fi
if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1; then
  # No terminal (CI): never wait on a password prompt.
  if [ -t 0 ]; then as_root=(sudo); else as_root=(sudo -n); fi
else
  echo "The HTML report's browser test needs ${missing[*]} from Debian's packages, this user" \
    "is not root and sudo is not installed: as root, run" \
    " apt-get install --no-install-recommends ${missing[*]}" >&2
  exit 2
fi

echo "Installing ${missing[*]} (Debian packages) for the tests ..." >&2
log="$(mktemp -t styldod-apt.XXXXXX)"
policy=/usr/sbin/policy-rc.d
made_policy=""
cleanup() {
  if [ -n "$made_policy" ]; then "${as_root[@]}" rm -f "$policy"; fi
  rm -f "$log"
}
trap cleanup EXIT
# Some of Chromium's dependencies ship system services (D-Bus, ...): keep them stopped, the
# way Debian's container images do.
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | "${as_root[@]}" tee "$policy" >/dev/null
  "${as_root[@]}" chmod 755 "$policy"
  made_policy=1
fi
apt_install() {
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >>"$log" 2>&1
}
# The package lists may be missing or stale (a fresh machine): refresh them only if needed.
if ! apt_install; then
  if ! { "${as_root[@]}" apt-get update -qq >>"$log" 2>&1 && apt_install; }; then
    echo "Could not install ${missing[*]}; apt-get said:" >&2
    tail -n 20 "$log" >&2
    exit 2
  fi
fi
