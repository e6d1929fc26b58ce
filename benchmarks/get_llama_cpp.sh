#!/usr/bin/env bash
# Build llama.cpp's CPU tools (llama-bench, llama-quantize, llama-simple) from the llama.cpp source vendored
# in llama-cpp-python's sdist on PyPI, for `llmscratch bench generate --llama-cpp PATH`.
# llama.cpp stays your own binary: nothing here is a dependency of llmscratch and nothing lands in the repo.
#
#   benchmarks/get_llama_cpp.sh [PREFIX]      # default PREFIX: /work/tools/llama.cpp
#   -> PREFIX/bin/llama-bench, PREFIX/bin/llama-quantize (F32/F16/Q8_0 copies), PREFIX/bin/llama-simple (start-up)
#
# Environment: PYTHON (default: python3, needs pip), JOBS (default 2), LLAMA_CPP_PYTHON_VERSION (pinned below).
# Needs a C/C++ compiler; cmake (and ninja) from PATH, else installed from PyPI into PREFIX/buildenv.
set -euo pipefail

PREFIX="${1:-/work/tools/llama.cpp}"
PYTHON="${PYTHON:-python3}"
JOBS="${JOBS:-2}"
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
SRC="$PREFIX/src"
BUILD="$PREFIX/build"

mkdir -p "$SRC" "$PREFIX/bin"
SDIST="$SRC/llama_cpp_python-$VERSION.tar.gz"
if [ ! -f "$SDIST" ]; then
  "$PYTHON" -m pip download --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$SRC"
fi
if [ ! -d "$SRC/llama_cpp_python-$VERSION" ]; then
  tar -xzf "$SDIST" -C "$SRC"
fi
LLAMA="$SRC/llama_cpp_python-$VERSION/vendor/llama.cpp"
[ -f "$LLAMA/CMakeLists.txt" ] || { echo "no vendor/llama.cpp in $SDIST" >&2; exit 1; }

if ! command -v cmake >/dev/null; then  # cmake and ninja from PyPI, in a build-only venv
  "$PYTHON" -m venv "$PREFIX/buildenv"
  "$PREFIX/buildenv/bin/pip" install cmake ninja
  export PATH="$PREFIX/buildenv/bin:$PATH"
fi
# CPU features. GGML_NATIVE=ON compiles for -march=native, AMX included when the CPU advertises it, but many VMs
# advertise amx_tile without granting its tile state: llama-bench then dies with SIGSEGV in
# ggml_backend_amx_mul_mat (seen on this project's machine). So on Linux the default is this CPU's own features
# read from /proc/cpuinfo with AMX off; LLAMA_CPP_NATIVE=1 builds with plain -march=native instead.
CPU_FLAGS=(-DGGML_NATIVE=ON)
if [ "${LLAMA_CPP_NATIVE:-0}" != 1 ] && [ -r /proc/cpuinfo ] && grep -qw avx2 /proc/cpuinfo; then
  have() { grep -m1 '^flags' /proc/cpuinfo | grep -qw "$1" && echo ON || echo OFF; }
  CPU_FLAGS=(-DGGML_NATIVE=OFF -DGGML_SSE42="$(have sse4_2)" -DGGML_F16C="$(have f16c)" -DGGML_FMA="$(have fma)"
             -DGGML_BMI2="$(have bmi2)" -DGGML_AVX="$(have avx)" -DGGML_AVX2="$(have avx2)"
             -DGGML_AVX_VNNI="$(have avx_vnni)" -DGGML_AVX512="$(have avx512f)"
             -DGGML_AVX512_VBMI="$(have avx512vbmi)" -DGGML_AVX512_VNNI="$(have avx512_vnni)"
             -DGGML_AVX512_BF16="$(have avx512_bf16)" -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF)
fi
GENERATOR=()
command -v ninja >/dev/null && GENERATOR=(-G Ninja)
cmake -S "$LLAMA" -B "$BUILD" "${GENERATOR[@]}" "${CPU_FLAGS[@]}" \
  -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DGGML_OPENMP=ON

for target in llama-bench llama-quantize llama-simple; do
  nice -n 15 cmake --build "$BUILD" --config Release -j "$JOBS" --target "$target"
  cp "$BUILD/bin/$target" "$PREFIX/bin/$target"
done
echo "built: $(ls "$PREFIX/bin")  ->  llmscratch bench generate --llama-cpp $PREFIX/bin/llama-bench"
