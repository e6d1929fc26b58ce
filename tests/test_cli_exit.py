"""The `llmscratch` command's quick exit (cli.run / cli.quick_exit): the whole output arrives, the exit status is
kept, and a thread or child process still running is waited for as Python's own exit would."""

import subprocess
import sys
import textwrap


def _python(code: str, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)


def test_the_output_is_flushed_and_the_status_kept(tmp_path):
    done = _python("""
        import sys
        from llmscratch.cli import quick_exit
        sys.stdout.write("x" * 200_000 + "\\nend\\n")  # more than one buffer, never flushed by hand
        sys.stderr.write("to stderr")
        quick_exit(3)
        print("not reached")
    """, tmp_path)
    assert done.returncode == 3
    assert done.stdout == "x" * 200_000 + "\nend\n" and done.stderr == "to stderr"


def test_a_running_thread_is_waited_for(tmp_path):
    done = _python("""
        import threading, time
        from llmscratch.cli import quick_exit
        def late():
            time.sleep(0.5)
            open("written", "w").write("yes")
        threading.Thread(target=late).start()
        quick_exit(0)
    """, tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "written").read_text() == "yes"


def test_the_command_keeps_its_statuses(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "llmscratch", "--version"], capture_output=True, text=True,
                        timeout=120)
    assert ok.returncode == 0 and ok.stdout.startswith("llmscratch ")
    bad = subprocess.run([sys.executable, "-m", "llmscratch", "generate", "--model", str(tmp_path / "nope"),
                          "--prompt", "Hi"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.startswith("llmscratch: error: unknown model") and "Traceback" not in bad.stderr
    usage = subprocess.run([sys.executable, "-m", "llmscratch", "generate", "--model", "m", "--prompt", "p",
                            "--no-such-flag"], capture_output=True, text=True, timeout=120)
    assert usage.returncode == 2 and "unrecognized arguments" in usage.stderr
