# Sourced: make_inplace BUILDDIR -> BUILDDIR/inplace/qloop importable with
# PYTHONPATH=BUILDDIR/inplace (the package's .py files are linked, so edits
# show without a rebuild; the extension is the one built in BUILDDIR).
make_inplace() {
    local build=$1 root
    root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    local pkg="$build/inplace/qloop"
    rm -rf "$pkg"
    mkdir -p "$pkg"
    for f in "$root"/python/qloop/*; do ln -s "$f" "$pkg/"; done
    ln -s "$(cd "$build" && pwd)"/python/_qloop*.so "$pkg/"
}
