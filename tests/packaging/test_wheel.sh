#!/usr/bin/env bash
# The Dockerfile's steps, in a fresh venv instead of an image:
#   1. build the wheel (pip wheel --no-deps) from a copy holding only the
#      files the build stage's COPY lines name;
#   2. check it needs nothing but CPython: no Requires-Dist in METADATA,
#      the extension links only libc (and libpthread/libm/ld-linux), no
#      file outside qloop/ and its .dist-info;
#   3. install it into a fresh `python -m venv` with --no-index (no network)
#      and run a loop from there, away from the source tree.
# Without build isolation when meson-python, meson and ninja are importable
# (offline and faster); the Dockerfile uses pip's build isolation.
#   tests/packaging/test_wheel.sh [PYTHON]
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
py=${1:-${PYTHON:-python3}}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

# 1. The sources the Dockerfile copies, and nothing else.
mkdir "$tmp/src"
sources=$(awk '/^FROM / { stage++ } stage == 1 && /^COPY / && !/--from/ {
    for (i = 2; i < NF; i++) print $i }' "$root/Dockerfile")
[ -n "$sources" ] || fail "no COPY lines in the Dockerfile's build stage"
for f in $sources; do
    [ -e "$root/$f" ] || fail "the Dockerfile copies $f, which does not exist"
    cp -r "$root/$f" "$tmp/src/"
done
isolation=(--no-build-isolation)
"$py" -c 'import mesonpy, mesonbuild, ninja' 2>/dev/null || isolation=()
# pkg-config is not in the image: make sure the build does not need it.
PKG_CONFIG=/nonexistent/pkg-config "$py" -m pip wheel -q --no-deps \
    --disable-pip-version-check "${isolation[@]}" -w "$tmp/wheels" "$tmp/src" ||
    fail "pip wheel failed"
wheels=("$tmp"/wheels/qloop-*.whl)
[ ${#wheels[@]} = 1 ] && [ -f "${wheels[0]}" ] || fail "expected one qloop wheel"
wheel=${wheels[0]}
echo "built $(basename "$wheel") ($(stat -c %s "$wheel") bytes)"

# 2. Nothing but CPython.
mkdir "$tmp/unpacked"
"$py" -m zipfile -e "$wheel" "$tmp/unpacked"
metadata=$(ls "$tmp"/unpacked/qloop-*.dist-info/METADATA)
if grep -q '^Requires-Dist:' "$metadata"; then
    fail "the wheel has requirements: $(grep '^Requires-Dist:' "$metadata" | tr '\n' ' ')"
fi
strays=$(cd "$tmp/unpacked" && ls -A | grep -Ev '^(qloop|qloop-[^/]*\.dist-info)$' || true)
[ -z "$strays" ] || fail "files outside the package in the wheel: $strays"
sos=("$tmp"/unpacked/qloop/_qloop*.so)
[ ${#sos[@]} = 1 ] && [ -f "${sos[0]}" ] || fail "expected one _qloop*.so in the wheel"
needed=$(readelf -d "${sos[0]}" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
for lib in $needed; do
    case $lib in
    libc.so.* | libpthread.so.* | libm.so.* | ld-linux*) ;;
    *) fail "the extension links $lib (NEEDED: $(echo $needed))" ;;
    esac
done
echo "no Requires-Dist; NEEDED: $(echo $needed)"

# 3. A fresh venv, no index, no source tree in sight.
"$py" -m venv "$tmp/venv" || fail "python -m venv failed"
"$tmp/venv/bin/python" -m pip install -q --no-index --disable-pip-version-check \
    "$wheel" || fail "pip install --no-index of the wheel failed"
cd "$tmp"
env -u PYTHONPATH "$tmp/venv/bin/python" - "$tmp/venv" <<'PY' || fail "the installed wheel does not work"
import asyncio, os, socket, sys
import qloop
venv = os.path.realpath(sys.argv[1])
where = os.path.realpath(qloop.__file__)
assert where.startswith(venv + os.sep), f"qloop imported from {where}"

async def main():
    loop = asyncio.get_running_loop()
    assert isinstance(loop, qloop.Loop), type(loop)
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    with a, b:
        await loop.sock_sendall(a, b"ping")
        data = await asyncio.wait_for(loop.sock_recv(b, 4), 10)
    await asyncio.sleep(0.001)
    return data

assert qloop.run(main()) == b"ping"
print(f"qloop from {where}: ok")
PY
"$tmp/venv/bin/python" -m pip check -q --disable-pip-version-check >/dev/null ||
    fail "pip check found broken requirements"
echo "ok"
