#!/usr/bin/env bash
# The browser the dashboard's tests drive: Debian's chromium and
# chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver), headless.
# Idempotent: installs only what is missing.
set -euo pipefail
packages=()
[ -x /usr/bin/chromium ] || packages+=(chromium)
[ -x /usr/bin/chromedriver ] || packages+=(chromium-driver)
if [ ${#packages[@]} -gt 0 ]; then
  echo "installing ${packages[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi
# The two must be one version: ChromeDriver refuses another Chromium.
browser=$(/usr/bin/chromium --version | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | head -1)
driver=$(/usr/bin/chromedriver --version | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | head -1)
if [ "$browser" != "$driver" ]; then
  echo "error: chromium $browser and chromedriver $driver differ: apt-get install --only-upgrade chromium chromium-driver" >&2
  exit 1
fi
