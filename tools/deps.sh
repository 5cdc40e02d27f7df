# Sourced by tools/test and tools/bench: install what is missing, quietly.
# Debian packages through apt-get (as root), Python packages through pip.

qloop_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}

_apt_updated=0
ensure_apt() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" ||
            missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" != 0 ]; then
        echo "qloop: missing Debian packages (need root to install): ${missing[*]}" >&2
        return 1
    fi
    echo "qloop: installing Debian packages: ${missing[*]}" >&2
    if [ $_apt_updated = 0 ]; then
        apt-get update -qq >/dev/null || return 1
        _apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# ensure_pip MODULE[=PIPNAME] ...: install PIPNAME when MODULE does not import.
ensure_pip() {
    local missing=()
    for spec in "$@"; do
        local mod=${spec%%=*} pkg=${spec#*=}
        "$PYTHON" -c "import $mod" 2>/dev/null || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "qloop: installing Python packages: ${missing[*]}" >&2
    "$PYTHON" -m pip install -q --disable-pip-version-check "${missing[@]}" 2>&1 |
        grep -v "Running pip as the 'root' user" >&2
    return "${PIPESTATUS[0]}"
}

ensure_build_tools() {
    ensure_apt gcc pkg-config check libuv1-dev valgrind || return 1
    ensure_pip mesonbuild=meson ninja=ninja || return 1
    command -v meson >/dev/null && command -v ninja >/dev/null || {
        echo "qloop: meson/ninja not on PATH after install" >&2
        return 1
    }
}

# configure BUILDDIR [meson args...]: set up once, reconfigure when args change.
configure() {
    local dir=$1
    shift
    local want="$*"
    if [ -f "$dir/build.ninja" ] && [ "$(cat "$dir/.qloop-args" 2>/dev/null)" = "$want" ]; then
        return 0
    fi
    rm -rf "$dir"
    meson setup "$dir" "$qloop_root" "$@" >"$dir.setup.log" 2>&1 || {
        cat "$dir.setup.log" >&2
        return 1
    }
    echo "$want" >"$dir/.qloop-args"
}
