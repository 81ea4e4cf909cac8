#!/usr/bin/env bash
# Sets up everything Glassbox needs on a Debian/Ubuntu machine, installing only what is
# missing, so that running it again when everything is there takes a fraction of a second.
# Run as root from anywhere; ./run and ./test call it before they do anything else.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"
# Debian's own Python, not a per-user one (pyenv under /root): the web app's workers drop to
# the unprivileged `glassbox` user and must still be able to read the interpreter.
PYTHON="${GLASSBOX_PYTHON:-/usr/bin/python3}"
APP_USER=glassbox

DEBIAN_PACKAGES=(
    python3 python3-venv   # the virtualenv's interpreter
    busybox-static         # the busybox base image is built from it
    graphviz               # lays out the image tree
    runc crun              # reference runtimes for tests and `glassbox bench`
    skopeo umoci           # read and write the OCI image layout from outside
    libseccomp2            # the runtime's seccomp filter (through pyseccomp)
    iproute2               # `ip` for the containers' loopback
    chromium               # headless browser for the web tests (driven by Playwright)
)

say() { echo "setup: $*" >&2; }
die() { echo "setup: error: $*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "run me as root (sudo $0): I install Debian packages, create the \
'$APP_USER' user and link /usr/local/bin/glassbox; the daemon itself needs root too."
command -v dpkg-query >/dev/null && command -v apt-get >/dev/null \
    || die "this set-up needs a Debian or Ubuntu machine (dpkg and apt-get were not found)."

install_debian_packages() {
    local installed missing=() p
    installed=" $(dpkg-query -W -f='${Package}=${db:Status-Status} ' "${DEBIAN_PACKAGES[@]}" 2>/dev/null || true) "
    for p in "${DEBIAN_PACKAGES[@]}"; do
        [[ $installed == *" $p=installed "* ]] || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Try the package lists the machine already has; refresh them only if that fails.
    apt-get install -y --no-install-recommends "${missing[@]}" \
        || { apt-get update && apt-get install -y --no-install-recommends "${missing[@]}"; } \
        || die "could not install ${missing[*]} with apt-get (see its messages above)."
}

# The virtualenv is rebuilt only when pyproject.toml or the interpreter changes.
install_virtualenv() {
    local stamp_file="$VENV/.glassbox-setup" stamp home
    stamp="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1) $PYTHON"
    if [[ -x $VENV/bin/python && -f $stamp_file && $(<"$stamp_file") == "$stamp" ]]; then
        return 0
    fi
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "$PYTHON is older than Python 3.11; set GLASSBOX_PYTHON to a Python 3.11+."
    home=$(sed -n 's/^home *= *//p' "$VENV/pyvenv.cfg" 2>/dev/null || true)
    if [[ -e $VENV && $home != "$(dirname "$(readlink -f "$PYTHON")")" ]]; then
        say "replacing $VENV: it was made with another Python (${home:-unknown})"
        rm -rf "$VENV"
    fi
    if [[ ! -x $VENV/bin/python ]]; then
        say "creating the virtualenv $VENV with $PYTHON"
        "$PYTHON" -m venv "$VENV"
    fi
    say "installing Glassbox and its pinned dependencies into $VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -e "$ROOT[test]"
    echo "$stamp" >"$stamp_file"
}

link_command() {
    local target="$VENV/bin/glassbox"
    [[ $(readlink /usr/local/bin/glassbox 2>/dev/null) == "$target" ]] && return 0
    say "linking /usr/local/bin/glassbox -> $target"
    ln -sfn "$target" /usr/local/bin/glassbox
}

create_app_user() {
    getent passwd "$APP_USER" >/dev/null && return 0
    say "creating the system user '$APP_USER' (the web app runs as it)"
    useradd --system --user-group --no-create-home --shell /usr/sbin/nologin "$APP_USER"
}

# The web app's workers run as $APP_USER from this checkout: a checkout under a private
# directory (such as /root) would stop them, so say so now rather than at `glassbox up`.
check_app_user_can_read_checkout() {
    setpriv --reuid="$APP_USER" --regid="$APP_USER" --clear-groups \
        test -r "$ROOT/app/__init__.py" -a -x "$(readlink -f "$VENV/bin/python")" && return 0
    say "warning: user '$APP_USER' cannot read $ROOT or its virtualenv's Python;"
    say "warning: the web app cannot drop privileges there: move the checkout (e.g. to /opt/glassbox)."
}

# The docker CLI is what students type; Glassbox's daemon is its server. Debian's docker.io
# also brings dockerd: it is installed but never started (policy-rc.d refuses the start),
# and only where the machine has no docker CLI at all.
install_docker_cli() {
    command -v docker >/dev/null && return 0
    say "installing the docker CLI (Debian's docker.io, its daemon left stopped)"
    local policy=/usr/sbin/policy-rc.d created=""
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && created=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends docker.io \
        || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends docker.io; } \
        || { [[ -n $created ]] && rm -f "$policy"; die "could not install docker.io"; }
    [[ -n $created ]] && rm -f "$policy"
    return 0
}

# The browser's libraries (xterm.js, its fit addon, socket.io-client) come from npm at the
# versions package-lock.json pins, into node_modules/, which the web app serves itself: a
# classroom may be offline, so no page loads anything from a CDN. Skipped when the lock
# file has not changed since the last install.
install_frontend_packages() {
    local stamp_file="$ROOT/node_modules/.glassbox-setup" stamp
    stamp=$(sha256sum "$ROOT/package-lock.json" | cut -d' ' -f1)
    [[ -f $stamp_file && $(<"$stamp_file") == "$stamp" ]] && return 0
    if ! command -v npm >/dev/null; then
        say "installing npm (Debian's package) for the front-end libraries"
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends npm \
            || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends npm; } \
            || die "could not install npm with apt-get"
    fi
    say "installing the front-end packages from package-lock.json (npm ci)"
    (cd "$ROOT" && npm ci --no-audit --no-fund --loglevel=error) \
        || die "npm ci failed (see above); the web app needs node_modules/ for its pages"
    echo "$stamp" >"$stamp_file"
}

install_debian_packages
install_docker_cli
install_virtualenv
link_command
create_app_user
check_app_user_can_read_checkout
install_frontend_packages
