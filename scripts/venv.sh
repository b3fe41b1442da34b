# Sourced by scripts/main.sh and scripts/test.sh (from the checkout's top directory):
# everything is installed into the checkout's own virtual environment, .venv, never
# into the machine's interpreter. Sets VENV and PY.

# apt_install PKG...: install Debian packages that are missing (quietly, non-interactive)
apt_install() {
    [ "$#" -gt 0 ] || return 0
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

VENV="$PWD/.venv"
PY="$VENV/bin/python"
# a venv whose interpreter went away (python3 upgraded, checkout moved) is made again
if ! "$PY" -m pip --version >/dev/null 2>&1; then
    # Debian's python3 ships venv's pip bootstrap (ensurepip) in python3-venv
    if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
        apt_install python3-venv
    fi
    python3 -m venv --clear "$VENV"
fi
