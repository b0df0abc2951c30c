#!/usr/bin/env bash
# Set up everything this project needs on a fresh Debian/Ubuntu machine, idempotently:
#   scripts/bootstrap.sh          Python venv (.venv) with the package and its dependencies
#   scripts/bootstrap.sh --test   ... plus what the test suite needs (a C compiler,
#                                 Mosquitto, VictoriaMetrics, Chromium + chromium-driver)
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
apt_updated=0
apt_install() {  # apt_install PKG... : install Debian packages that are missing
    local missing=()
    for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    if ! command -v apt-get >/dev/null; then
        echo "bootstrap: please install ${missing[*]} (no apt-get on this machine)" >&2
        return 1
    fi
    if [ $apt_updated = 0 ]; then $SUDO apt-get update -qq; apt_updated=1; fi
    echo "bootstrap: installing ${missing[*]}" >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
}

PY=${PYTHON:-python3}
if ! command -v "$PY" >/dev/null || ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    apt_install python3 python3-venv python3-pip
    PY=python3
fi
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "bootstrap: Python >= 3.11 is required (found $("$PY" --version))" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    if ! "$PY" -m venv .venv 2>/dev/null; then
        rm -rf .venv
        ver=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
        apt_install "python${ver}-venv" || apt_install python3-venv
        "$PY" -m venv .venv
    fi
fi

stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e ".[test,dev]"
    rm -f .venv/.installed-*
    touch "$stamp"
fi

# apt_install_no_service PKG... : install server packages without starting or enabling their
# system services (the test suite starts its own instances on free loopback ports). While apt
# runs, a policy-rc.d that answers 101 keeps the maintainer scripts from starting anything;
# afterwards the units of the packages installed here are disabled again.
apt_install_no_service() {
    local missing=() policy=/usr/sbin/policy-rc.d made_policy=0 rc=0
    for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ ! -e "$policy" ] && command -v apt-get >/dev/null; then
        printf '#!/bin/sh\n# bootstrap.sh: do not start services while installing\nexit 101\n' \
            | $SUDO tee "$policy" >/dev/null
        $SUDO chmod 755 "$policy"
        made_policy=1
    fi
    apt_install "${missing[@]}" || rc=$?
    [ $made_policy = 1 ] && $SUDO rm -f "$policy"
    if [ $rc = 0 ] && command -v systemctl >/dev/null; then
        for p in "${missing[@]}"; do
            for unit in $(dpkg -L "$p" 2>/dev/null | grep -E '/systemd/system/[^/]+\.service$' \
                          | xargs -r -n1 basename); do
                $SUDO systemctl disable "$unit" >/dev/null 2>&1 || true
            done
        done
    fi
    return $rc
}

if [ $want_test = 1 ]; then
    command -v gcc >/dev/null || apt_install gcc libc6-dev
    # the reference firmware (firmware/): cross-compiled for a Cortex-M3 and run on QEMU's
    # emulation of it (mps2-an385); newlib for its libc and libm
    apt_install gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm
    # real servers for the sink tests (tests/services.py): Mosquitto, VictoriaMetrics (InfluxDB
    # line protocol), openssl for throw-away TLS certificates
    command -v openssl >/dev/null || apt_install openssl
    # systemd-analyze checks the deployed units (tests/test_deploy.py); a container may lack it
    command -v systemd-analyze >/dev/null || apt_install systemd
    apt_install_no_service mosquitto victoria-metrics
    # a real browser for the web page's tests (tests/test_web_browser.py, Selenium): Debian's
    # Chromium and its WebDriver (no browser download at test time); Ubuntu names them
    # chromium-browser and chromium-chromedriver
    { command -v chromedriver >/dev/null \
        && { command -v chromium >/dev/null || command -v chromium-browser >/dev/null; }; } \
        || apt_install chromium chromium-driver \
        || apt_install chromium-browser chromium-chromedriver
fi
