"""Writes one benchmark's section of BENCHMARKS.md, with the command, machine and versions."""

import datetime
import os
import pathlib
import platform
import re
import shlex
import sys

BENCHMARKS_FILE = pathlib.Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
HEADER = (
    "# Benchmarks\n\nEvery section is written by a module of `benchmarks/`; "
    "rerun its command to refresh it.\n"
)


def environment():
    """The machine and versions. TensorFlow is named only where it is installed: the accelerator
    machines run JAX without it, and a finished benchmark must still write its section there."""
    import keras
    import numpy

    versions = [
        f"Keras {keras.__version__} ({keras.backend.backend()} backend)",
        f"NumPy {numpy.__version__}",
    ]
    try:
        import tensorflow as tf

        versions.insert(0, f"TensorFlow {tf.__version__}")
    except ImportError:
        pass
    if keras.backend.backend() == "jax":
        import jax

        versions.insert(0, f"JAX {jax.__version__} on {jax.devices()[0].device_kind}")
    return (
        f"{platform.machine()}, {os.cpu_count()} CPU cores{cpu_description()}, "
        f"Python {platform.python_version()}, " + ", ".join(versions)
    )


# The CPU features that decide which kernels run: oneDNN's bf16 and XNNPACK's int8 need them.
CPU_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")


def cpu_description():
    """' (CPU model, family/model, its vector features)' from /proc/cpuinfo; '' where there is none.
    Machines of one name differ here from day to day (AVX-512 with BF16 on one, AVX2 only on another)."""
    try:
        with open("/proc/cpuinfo") as f:
            fields = dict(
                line.split(":", 1) for line in f.read().split("\n\n")[0].splitlines() if ":" in line
            )
    except OSError:
        return ""
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    flags = set(fields.get("flags", "").split())
    features = "/".join(feature for feature in CPU_FEATURES if feature in flags) or "no AVX2"
    family, model = fields.get("cpu family", "?"), fields.get("model", "?")
    return f" ({fields.get('model name', '?')}, family {family} model {model}, {features})"


def command():
    """The command line that is running: `python -m benchmarks.<name> ARGS`, with the Keras
    backend in front when it is not TensorFlow (the default)."""
    import keras

    spec = getattr(sys.modules["__main__"], "__spec__", None)
    program = ["-m", spec.name] if spec else [os.path.relpath(sys.argv[0])]
    backend = keras.backend.backend()
    prefix = "" if backend == "tensorflow" else f"KERAS_BACKEND={backend} "
    return prefix + "python " + " ".join(shlex.quote(arg) for arg in [*program, *sys.argv[1:]])


def write_section(name, title, body, path=BENCHMARKS_FILE):
    """Replaces (or appends) the section `name` of the benchmarks file."""
    section = (
        f"<!-- section:{name} -->\n## {title}\n\n"
        f"Command: `{command()}` ({datetime.date.today().isoformat()})  \n"
        f"Machine: {environment()}\n\n{body.strip()}\n<!-- /section:{name} -->\n"
    )
    path = pathlib.Path(path)
    text = path.read_text() if path.exists() else HEADER
    pattern = re.compile(rf"<!-- section:{re.escape(name)} -->.*?<!-- /section:{re.escape(name)} -->\n", re.S)
    text = (
        pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    )
    path.write_text(text)
