#!/usr/bin/env bash
# Called by scripts/test: tests/test_html_report.py opens the HTML report in a real headless
# browser, so Debian's Chromium and its WebDriver must be on the machine. Installs what is
# missing from Debian's packages (scripts/_debian.sh), quietly; does nothing (in a few
# milliseconds) when both are already there.
set -euo pipefail

missing=()
[ -x /usr/bin/chromium ] || command -v chromium >/dev/null 2>&1 || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || command -v chromedriver >/dev/null 2>&1 \
  || missing+=(chromium-driver)
[ "${#missing[@]}" -eq 0 ] && exit 0

exec "$(dirname "$0")/_debian.sh" "the HTML report's browser test" \
  "install Chromium and its chromedriver by hand (on PATH)." \
  "${missing[@]}"
