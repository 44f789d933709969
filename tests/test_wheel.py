"""`pip install spinenet-tf` is a whole product: the wheel alone, in an empty folder, trains the default."""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent


def run(command, cwd, env=None):
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.mark.slow
def test_the_wheel_in_a_fresh_venv_trains_the_embedded_default_from_an_empty_folder(tmp_path):
    # Build from a copy of what the wheel is made of, so that the build leaves nothing in the repo.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source)
    shutil.copytree(
        REPO / "spinenet_tf", source / "spinenet_tf", ignore=shutil.ignore_patterns("__pycache__")
    )
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    run([*build, "-w", str(tmp_path / "dist"), str(source)], tmp_path)
    (wheel,) = (tmp_path / "dist").glob("spinenet_tf-*.whl")

    # A fresh venv that borrows this environment's dependencies (TensorFlow...) through a .pth
    # line: a plain path, so the editable spinenet_tf's own .pth hook there is not run.
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path)
    python = venv / "bin" / "python"
    purelib = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path)
    (pathlib.Path(purelib.strip()) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    install = ["-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed"]
    run([str(python), *install, str(wheel)], tmp_path, env)

    empty = tmp_path / "empty"
    empty.mkdir()
    imported = run([str(python), "-c", "import spinenet_tf; print(spinenet_tf.__file__)"], empty, env)
    assert imported.startswith(str(venv)), imported

    overrides = [
        "train.total_steps=2",
        "train.checkpoint_interval=2",
        "train.batch_size=2",
        "data.image_size=128",
        "data.synthetic.num_train=4",
        "data.synthetic.num_val=2",
    ]
    command = [str(venv / "bin" / "spinenet"), "train", "--model-dir", "runs/x", "--progress", "lines"]
    output = run(command + [arg for override in overrides for arg in ("--set", override)], empty, env)
    assert "config: retinanet/synthetic" in output and "step 2/2" in output, output
    metrics = json.loads((empty / "runs" / "x" / "metrics.json").read_text())
    assert metrics["step"] == 2 and len(metrics["per_class_AP"]) == 6, metrics
    assert sorted(path.name for path in empty.iterdir()) == ["runs"]  # the dataset went to the cache
    assert list((tmp_path / "cache" / "spinenet_tf").glob("synthetic-*/annotations/instances_val.json"))
