"""tests/prewarmed.py: a command forked from the pre-warmed server behaves as the same command in a fresh
interpreter in what the tests rely on (argv, working directory, environment read at import, sys.path, output,
exit status), and nothing but the preloaded modules is already imported."""

import json
import os
import subprocess
import sys
import textwrap

import prewarmed
import pytest

PROBE = textwrap.dedent(
    """
    import json, os, sys
    print(json.dumps({
        "argv": sys.argv,
        "cwd": os.getcwd(),
        "path0": sys.path[0],
        "extra_on_path": os.environ.get("EXTRA_DIR", "") in sys.path,
        "marker": os.environ.get("PREWARMED_MARKER"),
        "imported": sorted(m for m in ("torch", "transformers", "huggingface_hub", "retvlp", "accelerate")
                           if m in sys.modules),
    }))
    """
)


def _report(done) -> dict:
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("form", ["-c", "script", "-m"])
def test_the_child_is_the_command_it_was_given(tmp_path, form):
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "probe_module.py").write_text(PROBE)
    (tmp_path / "probe_script.py").write_text(PROBE)
    command = {
        "-c": [sys.executable, "-c", PROBE, "a", "b"],
        "script": [sys.executable, str(tmp_path / "probe_script.py"), "a", "b"],
        "-m": [sys.executable, "-m", "probe_module", "a", "b"],
    }[form]
    environment = {
        **dict(os.environ),
        "PREWARMED_MARKER": "here",
        "EXTRA_DIR": str(extra),
        "PYTHONPATH": str(extra),
    }
    report = _report(prewarmed.run(command, env=environment, cwd=tmp_path))
    assert report["argv"][1:] == ["a", "b"]
    assert report["argv"][0] == {"-c": "-c", "script": command[1], "-m": str(extra / "probe_module.py")}[form]
    assert report["cwd"] == str(tmp_path)
    assert report["path0"] == {"-c": "", "script": str(tmp_path), "-m": str(tmp_path)}[form]
    assert report["extra_on_path"] and report["marker"] == "here"
    assert report["imported"] == ["torch"]  # preloaded; never transformers, huggingface_hub nor retvlp


def test_the_environment_read_at_import_is_the_childs(tmp_path):
    code = "import huggingface_hub.constants as c, json; print(json.dumps([c.HF_HOME, c.HF_HUB_OFFLINE]))"
    for home in ("one", "two"):
        environment = {**dict(os.environ), "HF_HOME": str(tmp_path / home), "HF_HUB_OFFLINE": "1"}
        done = prewarmed.run([sys.executable, "-c", code], env=environment)
        assert json.loads(done.stdout) == [str(tmp_path / home), True], done.stderr


def test_exit_status_output_and_tracebacks_are_the_interpreters():
    done = prewarmed.run(
        [sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"]
    )
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")
    done = prewarmed.run([sys.executable, "-c", "raise SystemExit('a message')"])
    assert (done.returncode, done.stderr) == (1, "a message\n")
    done = prewarmed.run([sys.executable, "-c", "import atexit; atexit.register(print, 'bye'); 1 / 0"])
    assert done.returncode == 1 and done.stderr.rstrip().endswith("ZeroDivisionError: division by zero")
    assert done.stdout == "bye\n"  # atexit ran, as at a normal interpreter exit
    done = prewarmed.run([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"])
    assert done.returncode == -15


def test_a_child_past_its_timeout_is_killed_and_the_server_goes_on():
    with pytest.raises(subprocess.TimeoutExpired):
        prewarmed.run([sys.executable, "-c", "import time; time.sleep(60)"], timeout=1)
    assert prewarmed.run([sys.executable, "-c", "print(1)"]).stdout == "1\n"


def test_what_it_cannot_reproduce_runs_as_a_real_subprocess():
    done = prewarmed.run([sys.executable, "-X", "utf8", "-c", "import sys; print(sys.flags.utf8_mode)"])
    assert done.stdout == "1\n"
    environment = {**dict(os.environ), "PYTHONSAFEPATH": "1"}
    done = prewarmed.run([sys.executable, "-c", "import sys; print(sys.flags.safe_path)"], env=environment)
    assert done.stdout == "True\n"
