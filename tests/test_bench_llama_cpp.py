"""llama.cpp as the peer of `llmscratch bench generate`, against fake llama-bench / llama-quantize / llama-simple
scripts (printing llama-bench-like JSON), and the whole-process start-up figure."""

from __future__ import annotations

import json
import os
import stat

import pytest

from llmscratch.bench.generate import GenerateBenchConfig, run_generate_bench
from llmscratch.bench.llama_cpp import PeerFile, Tools, bench_command, find_tools, measure_round, run_child

# -pg P,N takes N * 10 ms (100 new tokens/s), -p P takes P * 1 ms (1000 tokens/s), as llama-bench -o json prints.
FAKE_BENCH = r"""#!/bin/sh
model=""; prefill=0; pgs=""
while [ $# -gt 0 ]; do
  case "$1" in
    -m) model="$2"; shift ;;
    -p) prefill="$2"; shift ;;
    -pg) pgs="$pgs $2"; shift ;;
  esac
  shift
done
head='  {"model_filename": "%s", "model_type": "llama ?B F32", "model_size": 1234, "n_prompt": %d'
echo "["
if [ "$prefill" -gt 0 ]; then
  printf "$head"', "n_gen": 0, "avg_ns": %d, "samples_ns": [ %d ]},\n' \
    "$model" "$prefill" $((prefill * 1000000)) $((prefill * 1000000))
fi
first=1
for pg in $pgs; do
  p=${pg%,*}; n=${pg#*,}
  [ $first -eq 1 ] || echo ","
  first=0
  printf "$head"', "n_gen": %d, "avg_ns": %d, "samples_ns": [ %d ]}' \
    "$model" "$p" "$n" $((n * 10000000)) $((n * 10000000))
done
echo
echo "]"
"""
FAKE_QUANTIZE = '#!/bin/sh\n[ "$1" = --allow-requantize ] && shift\ncp "$1" "$2"\n'
FAKE_SIMPLE = "#!/bin/sh\necho 'Hello world'\n"


def _script(path, text):
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def fake_llama_cpp(tmp_path):
    folder = tmp_path / "llama.cpp" / "bin"
    folder.mkdir(parents=True)
    _script(folder / "llama-bench", FAKE_BENCH)
    _script(folder / "llama-quantize", FAKE_QUANTIZE)
    _script(folder / "llama-simple", FAKE_SIMPLE)
    _script(folder / "llama-cli", FAKE_SIMPLE)
    return folder


def test_find_tools_accepts_the_binary_a_sibling_or_the_folder(fake_llama_cpp, tmp_path, monkeypatch):
    for given in (fake_llama_cpp / "llama-bench", fake_llama_cpp / "llama-cli", fake_llama_cpp,
                  fake_llama_cpp.parent):
        tools = find_tools(str(given))
        assert isinstance(tools, Tools) and tools.bench == fake_llama_cpp / "llama-bench", given
        assert tools.quantize == fake_llama_cpp / "llama-quantize" and tools.simple == fake_llama_cpp / "llama-simple"
    assert "not found" in find_tools(str(tmp_path / "nowhere"))
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    _script(lonely / "llama-cli", FAKE_SIMPLE)
    assert "no executable llama-bench" in find_tools(str(lonely / "llama-cli"))
    monkeypatch.setenv("PATH", str(fake_llama_cpp))
    assert find_tools(None).bench == fake_llama_cpp / "llama-bench"
    monkeypatch.setenv("PATH", str(tmp_path))
    assert "no llama.cpp binary" in find_tools(None)


def test_one_round_reads_the_rates_and_the_childs_peak_memory(fake_llama_cpp, tmp_path):
    tools = find_tools(str(fake_llama_cpp))
    peer = PeerFile("F32", tmp_path / "m.gguf")
    assert bench_command(tools, peer.path, 2, 16, (50, 200), 512)[-6:] == ["-p", "512", "-pg", "16,50", "-pg",
                                                                          "16,200"]
    for _ in range(2):
        measure_round(tools, peer, 2, 16, (50, 200), 512)
    assert peer.error is None
    assert peer.decode == {50: [pytest.approx(100.0)] * 2, 200: [pytest.approx(100.0)] * 2}
    assert peer.prefill == [pytest.approx(1000.0)] * 2 and peer.model_bytes == 1234
    assert peer.maxrss_mb > 0

    broken = _script(tmp_path / "llama-bench", "#!/bin/sh\necho 'bad model' >&2\nexit 3\n")
    peer = PeerFile("F32", tmp_path / "m.gguf")
    measure_round(Tools(broken), peer, 2, 16, (50,), 512)
    assert "exit code 3" in peer.error and "bad model" in peer.error and not peer.decode


def test_llama_cpp_runs_without_our_openmp_tuning(fake_llama_cpp, tmp_path, monkeypatch):
    """OMP_WAIT_POLICY=PASSIVE (ours) is not passed on: llama.cpp's own default wait policy, as its users run it."""
    record = tmp_path / "policy.txt"
    wrapper = _script(tmp_path / "llama-bench", f'#!/bin/sh\necho "${{OMP_WAIT_POLICY:-unset}}" > {record}\n'
                      f'exec {fake_llama_cpp / "llama-bench"} "$@"\n')
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    peer = PeerFile("F32", tmp_path / "m.gguf")
    measure_round(Tools(wrapper), peer, 2, 16, (50,), 0)
    assert peer.error is None and peer.decode == {50: [pytest.approx(100.0)]}
    assert record.read_text().strip() == "unset"


def test_run_child_reports_its_own_maxrss(tmp_path):
    import sys

    small = run_child([sys.executable, "-c", "pass"], 60)
    big = run_child([sys.executable, "-c", "b = bytearray(200 * 2**20); b[::4096] = b'x' * len(b[::4096])"], 60)
    assert small.returncode == big.returncode == 0
    assert big.maxrss_mb > small.maxrss_mb + 150  # per child, not the largest child so far


def test_run_child_timeout_kills_the_command_too(tmp_path):
    marker = tmp_path / "still-running"
    slow = _script(tmp_path / "slow", f"#!/bin/sh\nsleep 3\ntouch {marker}\n")
    with pytest.raises(TimeoutError, match="ran longer than"):
        run_child([str(slow)], 0.5)
    import time

    time.sleep(3.5)
    assert not marker.exists()


def test_bench_generate_with_llama_cpp_peer(fake_llama_cpp, tiny_gguf, tmp_path, monkeypatch):
    monkeypatch.setenv("LLMSCRATCH_CACHE", str(tmp_path / "cache"))
    lines: list[str] = []
    cfg = GenerateBenchConfig.quick_run(model=str(tiny_gguf), threads=1, out=tmp_path / "out", progress=False,
                                        transformers=False, quantize=("int8",), llama_cpp=str(fake_llama_cpp),
                                        llama_cpp_copies=("F32", "Q8_0"))
    data = run_generate_bench(cfg, echo=lines.append)
    text = "\n".join(lines)
    part = data["models"][0]
    from llmscratch.model.base import huge_pages_available

    assert part["model"]["weights_on_2mb_pages"] == huge_pages_available()  # decoding as serve and chat do
    assert ("weights on 2 MB pages" in text) == huge_pages_available()
    assert data["bandwidth"]["huge_pages"] == huge_pages_available()  # the limits: the same kind of memory
    files = part["llama_cpp"]["files"]
    assert [f["label"] for f in files] == ["F32 (the file)", "Q8_0 copy"]  # the file is F32: no F32 copy
    assert (tmp_path / "cache" / "gguf-copies" / "tiny.Q8_0.gguf").is_file()
    for f in files:
        assert f["decode_tokens_per_s"] == {4: 100.0, 12: 100.0} and f["prefill_tokens_per_s"] == 1000.0
        assert len(f["decode_rounds"][4]) == cfg.repeats and f["error"] is None and f["peak_memory_mb"] > 0
    pairs = {(r["ours"], r["llama_cpp"]): r for r in part["ours_over_llama_cpp"]}
    assert set(pairs) == {("ours, KV cache", "F32 (the file)"), ("ours, KV cache, int8", "F32 (the file)"),
                          ("ours, KV cache, int8", "Q8_0 copy")}
    rate = {(r["variant"], r["new_tokens"]): r["tokens_per_s"] for r in part["results"]}
    assert pairs[("ours, KV cache", "F32 (the file)")]["decode"][12] == round(rate[("ours, KV cache", 12)] / 100, 2)
    prefill = part["prefill"]["tokens_per_s"]
    assert set(prefill) == {"ours, KV cache", "ours, KV cache, int8"} and all(v > 0 for v in prefill.values())
    assert pairs[("ours, KV cache", "F32 (the file)")]["prefill"] == round(prefill["ours, KV cache"] / 1000, 2)
    limits = part["decode_limits_tokens_per_s"]
    assert limits["int4"] > limits["int8"] > limits["float32"] > 0
    assert "llama.cpp, Q8_0 copy" in text and "ours, KV cache, int8 / llama.cpp Q8_0 copy: decode" in text
    saved = json.loads((tmp_path / "out" / "bench_generate.json").read_text())
    assert saved["models"][0]["llama_cpp"]["files"][0]["decode_tokens_per_s"] == {"4": 100.0, "12": 100.0}
    assert (tmp_path / "out" / "bench_generate.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_generate_without_binary_says_so_in_the_peer_columns(tiny_gguf, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", os.path.dirname(os.__file__))  # no llama-bench anywhere
    lines: list[str] = []
    cfg = GenerateBenchConfig.quick_run(model=str(tiny_gguf), threads=1, out=tmp_path, progress=False,
                                        transformers=False, tokens=(3,), repeats=1)
    data = run_generate_bench(cfg, echo=lines.append)
    assert data["models"][0]["llama_cpp"] == {"error": "no llama.cpp binary: give llama_cpp (--llama-cpp PATH) or "
                                                       "put llama-bench on PATH"}
    assert data["models"][0]["ours_over_llama_cpp"] == []
    assert any(line.startswith("llama.cpp: none (no llama.cpp binary") for line in lines)


def test_startup_of_a_whole_generate_process(tiny_gguf, fake_llama_cpp):
    from llmscratch.bench.startup import llama_cpp_startup, measure_startup

    s = measure_startup(str(tiny_gguf), "int8", threads=1, timeout=120)
    assert s.error is None, s.error
    assert s.command[-2:] == ["--quantize", "int8"] and "--max-new-tokens" in s.command
    assert s.wall_s > 0 and s.maxrss_mb > 50  # torch alone is more
    assert 0 < s.import_s and 0 < s.load_s and 0 < s.first_token_s < s.wall_s
    fake = llama_cpp_startup([str(fake_llama_cpp / "llama-simple"), "-n", "1", "Hello"])
    assert fake.error is None and fake.wall_s > 0


def test_bench_generate_times_the_gguf_blocks_kept(tiny_gguf, tmp_path):
    cfg = GenerateBenchConfig.quick_run(model=str(tiny_gguf), threads=1, out=tmp_path / "out", progress=False,
                                        transformers=False, quantize=("gguf",), llama_cpp=str(tmp_path / "none"),
                                        startup=False)
    part = run_generate_bench(cfg, echo=lambda line: None)["models"][0]
    rate = {(r["variant"], r["new_tokens"]): r["tokens_per_s"] for r in part["results"]}
    assert all(rate[("ours, KV cache, gguf", n)] > 0 for n in cfg.tokens)
    assert "gguf" in part["decode_limits_tokens_per_s"]
