#!/usr/bin/env bash
# Build the llama.cpp tools and shared libraries toggle uses, from a PyPI source distribution.
#
#   tools/build_llama_cpp.sh [PREFIX]
#
# PREFIX defaults to $TOGGLE_LLAMA_CPP, else <python's sys.prefix>/llama.cpp (the active venv),
# which is where toggle looks (toggle/formats/llama_cpp.py). It gets bin/ (llama-quantize,
# llama-tokenize, llama-perplexity, llama-imatrix, llama-completion, llama-bench, and toggle's
# own toggle-llama-logits from tools/llama_logits.c, which `toggle audit --engine llama.cpp`
# reads llama.cpp's logits with), lib/
# (libggml-base.so, libggml.so, libllama.so, ... loaded by toggle with ctypes), include/ and
# llama.cpp's LICENSE.
#
# Source: llama.cpp as vendored in the sdist of llama-cpp-python (MIT, like llama.cpp itself),
# fetched from PyPI's JSON API by version and checked against its sha256; only its
# vendor/llama.cpp directory is used (the Python package is not built). No prebuilt llama.cpp
# tools for Linux are served by the package registries.
#
# Build: GGML_NATIVE=OFF (the portable AVX2/FMA/F16C set; a native build on an AMX Xeon turns on
# AMX and every quantised model crashes in the AMX matrix multiply), AMX off, shared libraries,
# no curl/openssl, no tests/examples/server, only the targets above, RPATH $ORIGIN/../lib so
# the prefix can move. Idempotent: a prefix already built from the same source and flags is
# left alone (delete PREFIX/BUILD-INFO to force a rebuild). Measured on an idle 2-core Xeon:
# see benchmarks/notes.md (issue 14).
set -euo pipefail

SDIST_NAME=llama-cpp-python
SDIST_VERSION=0.3.36
SDIST_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
TARGETS=(llama-quantize llama-tokenize llama-perplexity llama-imatrix llama-completion llama-bench)
JOBS=${TOGGLE_BUILD_JOBS:-$(nproc 2>/dev/null || echo 2)}
CMAKE_FLAGS=(
    -DCMAKE_BUILD_TYPE=Release
    -DBUILD_SHARED_LIBS=ON
    -DGGML_NATIVE=OFF
    -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
    -DGGML_AVX512=OFF
    -DGGML_CCACHE=OFF
    -DGGML_OPENMP=OFF
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF
    -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_COMMON=ON
    -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON "-DCMAKE_INSTALL_RPATH=\$ORIGIN/../lib"
)

PY=${PYTHON:-$(command -v python || command -v python3)}
PREFIX=${1:-${TOGGLE_LLAMA_CPP:-$("$PY" -c 'import sys; print(sys.prefix)')/llama.cpp}}
BUILD_ID="$SDIST_NAME $SDIST_VERSION $SDIST_SHA256 targets=${TARGETS[*]} flags=${CMAKE_FLAGS[*]}"

HELPER_SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/llama_logits.c"
HELPER=toggle-llama-logits
# toggle's logits helper: a small C program against the prefix's libllama, rebuilt (in seconds)
# whenever its source changes; its sha256 is kept beside it.
build_helper() {
    local root=$1 sum
    sum=$(sha256sum "$HELPER_SRC" | cut -d' ' -f1)
    if [ -x "$root/bin/$HELPER" ] && [ "$(cat "$root/bin/$HELPER.sha256" 2>/dev/null)" = "$sum" ]; then
        return 0
    fi
    local cc=${CC:-$(command -v cc || command -v gcc || command -v clang)}
    "$cc" -O2 -std=c11 -Wall -o "$root/bin/$HELPER.tmp" "$HELPER_SRC" -I"$root/include" -L"$root/lib" \
        -lllama -lggml -lggml-base '-Wl,-rpath,$ORIGIN/../lib' ||
        { echo "build_llama_cpp: compiling $HELPER_SRC failed" >&2; return 1; }
    mv "$root/bin/$HELPER.tmp" "$root/bin/$HELPER"
    echo "$sum" >"$root/bin/$HELPER.sha256"
    echo "build_llama_cpp: built $root/bin/$HELPER"
}

if [ -f "$PREFIX/BUILD-INFO" ] && [ "$(head -n 1 "$PREFIX/BUILD-INFO")" = "$BUILD_ID" ]; then
    missing=0
    for t in "${TARGETS[@]}"; do [ -x "$PREFIX/bin/$t" ] || missing=1; done
    if [ "$missing" = 0 ]; then
        build_helper "$PREFIX"
        echo "build_llama_cpp: $PREFIX already holds llama.cpp from $SDIST_NAME $SDIST_VERSION; nothing to do"
        exit 0
    fi
fi

need() { command -v "$1" >/dev/null 2>&1; }
if ! need cmake; then
    echo "build_llama_cpp: cmake not found; installing it from PyPI (pip install cmake)"
    "$PY" -m pip install -q cmake
fi
if ! need c++ && ! need g++ && ! need clang++; then
    echo "build_llama_cpp: no C++ compiler (c++, g++ or clang++) found; install one (Debian: apt-get install build-essential)" >&2
    exit 2
fi
generator=()
need ninja && generator=(-G Ninja)

start=$(date +%s)
cache=${TOGGLE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/toggle}/llama.cpp-src
mkdir -p "$cache"
sdist="$cache/${SDIST_NAME//-/_}-$SDIST_VERSION.tar.gz"
if [ ! -f "$sdist" ] || ! echo "$SDIST_SHA256  $sdist" | sha256sum -c --status; then
    echo "build_llama_cpp: fetching $SDIST_NAME $SDIST_VERSION (sdist, ~77 MB) from PyPI"
    "$PY" - "$SDIST_NAME" "$SDIST_VERSION" "$SDIST_SHA256" "$sdist" <<'EOF'
import hashlib, json, os, sys, urllib.parse, urllib.request
name, version, sha, dest = sys.argv[1:]
api = f"https://pypi.org/pypi/{name}/json"
with urllib.request.urlopen(api, timeout=120) as r:
    files = json.load(r)["releases"].get(version, [])
sdists = [f for f in files if f["packagetype"] == "sdist"]
if not sdists:
    sys.exit(f"build_llama_cpp: PyPI has no sdist of {name} {version}")
url = urllib.parse.urljoin(api, sdists[0]["url"])
tmp = dest + ".part"
urllib.request.urlretrieve(url, tmp)
got = hashlib.sha256(open(tmp, "rb").read()).hexdigest()
if got != sha:
    os.unlink(tmp)
    sys.exit(f"build_llama_cpp: {url}: sha256 {got}, expected {sha}")
os.replace(tmp, dest)
EOF
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/toggle-llama-cpp.XXXXXX")
trap 'rm -rf "$work"' EXIT
top="${SDIST_NAME//-/_}-$SDIST_VERSION"
tar -xzf "$sdist" -C "$work" "$top/vendor/llama.cpp"
src="$work/$top/vendor/llama.cpp"

echo "build_llama_cpp: configuring (cmake ${CMAKE_FLAGS[*]})"
cmake -S "$src" -B "$work/build" "${generator[@]}" "${CMAKE_FLAGS[@]}" >"$work/configure.log" 2>&1 ||
    { tail -n 40 "$work/configure.log" >&2; echo "build_llama_cpp: cmake configure failed" >&2; exit 1; }
echo "build_llama_cpp: building ${TARGETS[*]} with $JOBS jobs"
cmake --build "$work/build" --target "${TARGETS[@]}" -j "$JOBS" >"$work/build.log" 2>&1 ||
    { tail -n 40 "$work/build.log" >&2; echo "build_llama_cpp: build failed" >&2; exit 1; }

stage="$PREFIX.tmp.$$"
rm -rf "$stage"
mkdir -p "$stage/bin" "$stage/lib" "$stage/include"
for t in "${TARGETS[@]}"; do cp "$work/build/bin/$t" "$stage/bin/"; done
find "$work/build/bin" -maxdepth 1 -name '*.so*' -exec cp -P {} "$stage/lib/" \;
cp "$src"/ggml/include/*.h "$src"/include/*.h "$stage/include/"
cp "$src/LICENSE" "$stage/LICENSE"
"$stage/bin/llama-quantize" --help >/dev/null 2>&1 || [ $? -eq 1 ] ||
    { echo "build_llama_cpp: the built llama-quantize does not run" >&2; exit 1; }
build_helper "$stage"
elapsed=$(( $(date +%s) - start ))
{ echo "$BUILD_ID"; echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) in ${elapsed}s with $JOBS jobs on $(nproc) cores"; } >"$stage/BUILD-INFO"
rm -rf "$PREFIX"
mkdir -p "$(dirname "$PREFIX")"
mv "$stage" "$PREFIX"
echo "build_llama_cpp: llama.cpp installed in $PREFIX (${elapsed}s)"
