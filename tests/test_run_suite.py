"""The suite runner behind `make test`: a dying pytest process is reported, never silent; launchers' signals don't leak."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _signals import default_signals

TESTS = Path(__file__).resolve().parent
RUNNER = TESTS / "run_suite.py"
INI = "[pytest]\nmarkers =\n    ray: starts a local Ray cluster\n"
#: the outer run's own journal and CI switches must not reach the inner sessions
CLEAN = ("SCALEREC_SUITE_JOURNAL", "SCALEREC_SUITE_DESELECT", "CI", "PYTEST_ADDOPTS")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLEAN}
    return {**env, **extra}


def _synthetic_env(**extra: str) -> dict[str, str]:
    """For the made-up suites in tmp_path: they use no third-party plugin, and autoloading the venv's
    (hypothesis, schemathesis) cost ~3 s per inner pytest process; `make test` itself runs with them
    (tests/test_first_hour.py)."""
    return _env(PYTEST_DISABLE_PLUGIN_AUTOLOAD="1", **extra)


def _ignore_and_block_sigint() -> None:
    """As a launcher that runs the suite in the background of a script (``make test &``) leaves it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


def _suite(tmp_path: Path, files: dict[str, str], *args: str, preexec=None, **env: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "pytest.ini").write_text(INI)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return subprocess.run(
        [sys.executable, str(RUNNER), "-q", "-p", "no:cacheprovider", *args],
        cwd=tmp_path, env=_synthetic_env(**env), capture_output=True, text=True, timeout=300, preexec_fn=preexec,
    )


CORE = "def test_ok():\n    pass\n\ndef test_also_ok():\n    pass\n"
RAY_DYING = """
import os, signal, pytest

pytestmark = pytest.mark.ray

@pytest.fixture
def sigkill():
    os.kill(os.getpid(), signal.SIGKILL)

def test_before():
    pass

def test_exits():
    os._exit(1)  # as Ray's core worker ends a driver whose GCS is gone

def test_killed_in_fixture(sigkill):
    pass

def test_after():
    pass
"""


def test_a_pytest_process_that_dies_is_named_counted_failed_and_the_rest_still_runs(tmp_path: Path) -> None:
    res = _suite(tmp_path, {"test_core.py": CORE, "test_cluster.py": RAY_DYING})
    out = res.stdout
    assert res.returncode == 1, out + res.stderr
    assert "2 passed, 4 deselected" in out  # the non-Ray part's own pytest summary
    assert "ray part: the pytest process exited with status 1 while running test_cluster.py::test_exits" in out
    assert "ray part: the pytest process was killed by signal SIGKILL while running test_cluster.py::test_killed_in_fixture" in out
    assert "1 passed, 5 deselected" in out  # test_after, run by a fresh pytest process
    assert out.rstrip().splitlines()[-1] == "suite: 4 passed, 2 failed, 0 skipped"


def test_a_segfault_leaves_a_traceback_and_a_summary(tmp_path: Path) -> None:
    crash = "import ctypes\n\ndef test_segfault():\n    ctypes.string_at(0)\n"
    ray = "import pytest\n\n@pytest.mark.ray\ndef test_r():\n    pass\n"
    res = _suite(tmp_path, {"test_core.py": CORE, "test_crash.py": crash, "test_cluster.py": ray})
    assert res.returncode == 1
    assert "Fatal Python error: Segmentation fault" in res.stderr  # faulthandler's dump of the crashing test
    assert "core part: the pytest process was killed by signal SIGSEGV while running test_crash.py::test_segfault" in res.stdout
    assert res.stdout.rstrip().splitlines()[-1] == "suite: 3 passed, 1 failed, 0 skipped"


def test_a_hung_test_is_interrupted_and_the_rest_still_runs(tmp_path: Path) -> None:
    hang = "import time\n\ndef test_hangs():\n    time.sleep(600)\n\ndef test_z_after():\n    pass\n"
    ray = "import pytest\n\n@pytest.mark.ray\ndef test_r():\n    pass\n"
    res = _suite(tmp_path, {"test_hang.py": hang, "test_cluster.py": ray}, SCALEREC_SUITE_TEST_TIMEOUT="2")
    assert res.returncode == 1
    assert "core part: test_hang.py::test_hangs still running after 2 s; interrupting it" in res.stdout
    assert res.stdout.rstrip().splitlines()[-1] == "suite: 2 passed, 1 failed, 0 skipped"


def test_a_part_that_collects_no_tests_fails_the_suite(tmp_path: Path) -> None:
    res = _suite(tmp_path, {"test_core.py": CORE})
    assert res.returncode == 1
    assert "ray part: pytest collected no tests; that is a failure of the suite" in res.stdout
    # An explicit selection may leave one part empty, but not all of them.
    assert _suite(tmp_path, {}, "-k", "test_ok").returncode == 0
    assert _suite(tmp_path, {}, "-k", "no_such_test").returncode == 5


def test_a_failing_test_fails_the_suite_with_both_summaries(tmp_path: Path) -> None:
    ray = "import pytest\n\n@pytest.mark.ray\ndef test_r():\n    assert False\n"
    res = _suite(tmp_path, {"test_core.py": CORE, "test_cluster.py": ray})
    assert res.returncode == 1
    assert "2 passed, 1 deselected" in res.stdout and "1 failed, 2 deselected" in res.stdout
    assert res.stdout.rstrip().splitlines()[-1] == "suite: 2 passed, 1 failed, 0 skipped"


def test_tests_get_default_sigint_when_the_suite_is_launched_with_it_ignored_and_blocked(tmp_path: Path) -> None:
    check = """
import signal

def test_sigint_raises_keyboard_interrupt():
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])
"""
    ray = check.replace("def test_", "import pytest\n\n@pytest.mark.ray\ndef test_ray_")
    res = _suite(tmp_path, {"test_core.py": check, "test_cluster.py": ray}, preexec=_ignore_and_block_sigint)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.rstrip().splitlines()[-1] == "suite: 2 passed, 0 failed, 0 skipped"


def test_sigterm_to_the_runner_still_prints_the_summary(tmp_path: Path) -> None:
    started = tmp_path / "started"
    hang = f"import pathlib, time\n\ndef test_hangs():\n    pathlib.Path({str(started)!r}).touch()\n    time.sleep(600)\n"
    (tmp_path / "pytest.ini").write_text(INI)
    (tmp_path / "test_hang.py").write_text(hang)
    proc = subprocess.Popen([sys.executable, str(RUNNER), "-q", "-p", "no:cacheprovider"], cwd=tmp_path, env=_synthetic_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_signals)
    try:
        deadline = time.monotonic() + 120
        while not started.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert "run_suite: interrupted by SIGTERM" in out
    assert out.rstrip().splitlines()[-1].startswith("suite: 0 passed")


_PROBE = "import signal; print(signal.getsignal(signal.SIGINT) == signal.SIG_IGN, signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, []))"
_LAUNCH = f"""
import signal, subprocess, sys
sys.path.insert(0, {str(TESTS)!r})
from _signals import default_signals
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGINT}})
subprocess.run([sys.executable, "-c", {_PROBE!r}], preexec_fn=default_signals if sys.argv[1] == "reset" else None)
"""


def test_default_signals_undoes_what_the_launcher_ignored_or_blocked() -> None:
    def child_state(mode: str) -> str:
        return subprocess.run([sys.executable, "-c", _LAUNCH, mode], capture_output=True, text=True, timeout=60).stdout.strip()

    assert child_state("inherit") == "True True"  # what a plain Popen passes on: the reason for the helper
    assert child_state("reset") == "False False"


@pytest.mark.slow
def test_the_ctrl_c_test_passes_when_launched_with_sigint_ignored_and_blocked() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/datasets/test_synth.py", "-k", "ctrl_c"],
        cwd=TESTS.parent, env=_env(), capture_output=True, text=True, timeout=600, preexec_fn=_ignore_and_block_sigint,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 passed" in res.stdout


def test_a_test_on_the_ray_cluster_fixture_is_put_in_the_ray_part_without_its_mark(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text((TESTS / "conftest.py").read_text())
    (tmp_path / "test_unmarked.py").write_text(
        "import pytest\n\n@pytest.fixture\ndef ray_cluster():\n    return None\n\n"
        "def test_on_the_cluster(ray_cluster):\n    pass\n\ndef test_plain():\n    pass\n"
    )
    (tmp_path / "pytest.ini").write_text(INI + "addopts = --strict-markers\n")
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only", "-m", "not ray"],
                         cwd=tmp_path, env=_synthetic_env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "test_unmarked.py::test_plain" in res.stdout
    assert "test_on_the_cluster" not in res.stdout and "1 deselected" in res.stdout


def test_skipped_tests_are_listed_loudly_with_their_reasons(tmp_path: Path) -> None:
    data = ("import pytest\n\n"
            "@pytest.mark.skipif(True, reason='Online Retail data not found at /x/online_retail.csv.gz')\n"
            "def test_needs_data():\n    pass\n\n"
            "def test_skips_inside():\n    pytest.skip('no server here')\n")
    ray = "import pytest\n\n@pytest.mark.ray\ndef test_r():\n    pass\n"
    res = _suite(tmp_path, {"test_core.py": CORE, "test_data.py": data, "test_cluster.py": ray})
    out = res.stdout
    assert res.returncode == 0, out + res.stderr  # a skip is not a failure here; CI fails on missing data itself
    assert "2 test(s) SKIPPED: these checks did not run" in out
    assert "1 skipped: Online Retail data not found at /x/online_retail.csv.gz" in out
    assert "1 skipped: no server here" in out and "test_data.py::test_needs_data" in out
    assert "'Get the data'" in out
    assert out.rstrip().splitlines()[-1] == "suite: 3 passed, 0 failed, 2 skipped"
