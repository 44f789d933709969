"""TF Model Garden as a reference to run against, in its own virtualenv.

tf-models-official pins TensorFlow 2.20 and tf_keras, which cannot share the project's
environment, so it gets a virtualenv of its own (.bench-venvs/model-garden, made on first
use). A benchmark starts one of this package's modules there as a `Server` (`python -m
benchmarks.<module>` from the repository root, so the module may import this package's
NumPy-only helpers, never spinenet_tf) and asks it questions one line at a time; the
server answers each with one JSON line. Asking call by call lets the benchmark alternate
Model Garden's timed calls with its own (see `timing.alternating_medians`).

This module imports only the standard library: the servers import it too.
"""

import json
import pathlib
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parent.parent
VENV = REPO / ".bench-venvs" / "model-garden"
INSTALL_TIMEOUT_S = 1800
# How a forward pass runs, on both sides of a comparison: mode -> tf.function's jit_compile
# (None: eager, no tf.function).
MODES = {"eager": None, "tf.function": False, "XLA": True}


def _run(command, timeout):
    """(stdout, None) of a command that succeeded, or (None, a one-line reason for a table)."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout} s"
    if result.returncode:
        return None, (result.stderr.strip() or result.stdout.strip() or "no output").splitlines()[-1][:200]
    return result.stdout, None


def model_garden_python(venv=VENV):
    """(python, None) of a virtualenv with tf-models-official, made on first use, or (None, reason)."""
    python = pathlib.Path(venv) / "bin" / "python"
    if not python.exists():
        print(f"making {venv} and installing tf-models-official (large download) ...", flush=True)
        _, reason = _run([sys.executable, "-m", "venv", str(venv)], 300)
        if reason:
            return None, f"could not make a virtualenv at {venv}: {reason}"
    _, reason = _run([str(python), "-c", "import official.vision.modeling.factory"], 300)
    if reason:
        _, reason = _run([str(python), "-m", "pip", "install", "-q", "tf-models-official"], INSTALL_TIMEOUT_S)
        if reason:
            return None, f"pip install tf-models-official failed: {reason}"
    return python, None


class Server:
    """A module of this package run by `python` (the Model Garden virtualenv's), one JSON answer
    per line asked."""

    def __init__(self, python, module, *args):
        self.module = module
        self.log = tempfile.TemporaryFile("w+")  # its stderr: TensorFlow's logs, and the error if it fails
        self.process = subprocess.Popen(
            [str(python), "-m", module, *map(str, args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            cwd=REPO,
        )

    def ask(self, line):
        """Its answer to one request line, as a dict; RuntimeError with its last log line if it died."""
        try:
            self.process.stdin.write(line + "\n")
            self.process.stdin.flush()
            answer = self.process.stdout.readline()
        except BrokenPipeError:
            answer = ""
        if not answer:
            self.log.seek(0)
            reason = (self.log.read().strip() or "no output").splitlines()[-1][:200]
            raise RuntimeError(f"{self.module} failed: {reason}")
        return json.loads(answer)

    def close(self):
        self.process.stdin.close()
        self.process.wait()
        self.log.close()
