# Sourced by scripts/test: the system programs the end-to-end tests drive, from Debian's packages.
# Chromium (driven by Playwright with executable_path=/usr/bin/chromium; never
# `playwright install`) and redis-server. Installed only when missing.

need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
if [ "${#need[@]}" -gt 0 ]; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    echo "scripts: installing ${need[*]} from Debian packages" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
