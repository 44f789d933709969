"""Every `spinenet` command answers a user error with one line on stderr and exit status 2."""

import subprocess
import sys

import pytest

# (command line, what the one line must say); {tmp} is a fresh temporary directory.
USER_ERRORS = {
    "train": (
        ["train", "--model-dir", "{tmp}/run", "--set", "data.image_size=160"],
        "spinenet train: data.image_size: 160 is not a multiple of 128",
    ),
    "eval": (
        ["eval", "--model-dir", "{tmp}/run"],
        "spinenet eval: {tmp}/run/config.yaml not found: not a training run's model dir?",
    ),
    "export": (
        ["export", "--model-dir", "{tmp}/run", "--out", "{tmp}/export"],
        "spinenet export: {tmp}/run/config.yaml not found",
    ),
    "predict": (
        ["predict", "--model", "{tmp}/model", "--out", "{tmp}/out", "{tmp}/a.jpg"],
        "spinenet predict: {tmp}/model is neither a .tflite file nor a SavedModel directory.",
    ),
    "predict tflite": (
        ["predict", "--model", "{tmp}/model.tflite", "--out", "{tmp}/out", "{tmp}/a.jpg"],
        "spinenet predict: {tmp}/model.tflite: no such .tflite file.",
    ),
    "data synthetic": (
        ["data", "synthetic", "--out", "{tmp}/data", "--num-val", "-2"],
        "spinenet data synthetic: num_val must be >= 0, got -2.",
    ),
    "data coco-to-tfrecord": (
        [
            "data",
            "coco-to-tfrecord",
            "--images",
            "{tmp}",
            "--annotations",
            "{tmp}/none.json",
            "--out",
            "{tmp}/r",
        ],
        "spinenet data coco-to-tfrecord: COCO annotations file not found: {tmp}/none.json",
    ),
    "arch": (
        ["arch", "--block-specs", "{tmp}/table.yaml", "--out", "{tmp}/a.png"],
        "spinenet arch: [Errno 2] No such file or directory: '{tmp}/table.yaml'",
    ),
}


def spinenet(*args):
    return subprocess.run([sys.executable, "-m", "spinenet_tf.cli", *args], capture_output=True, text=True)


@pytest.mark.parametrize("command", USER_ERRORS)
def test_a_user_error_is_one_line_naming_the_problem(command, tmp_path):
    argv, message = USER_ERRORS[command]
    run = spinenet(*(arg.format(tmp=tmp_path) for arg in argv))
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr and len(run.stderr.splitlines()) == 1, run.stderr
    assert run.stderr.startswith(message.format(tmp=tmp_path)), run.stderr


def test_an_impossible_architecture_is_one_line(tmp_path):
    (tmp_path / "table.yaml").write_text("- [2, bottleneck, [0, 1], false]\n- [9, residual, [0, 1], true]\n")
    run = spinenet("arch", "--block-specs", str(tmp_path / "table.yaml"), "--out", str(tmp_path / "a.png"))
    assert run.returncode == 2 and run.stderr.startswith("spinenet arch: Invalid architecture: Block "), (
        run.stderr
    )
    assert "level 9" in run.stderr and len(run.stderr.splitlines()) == 1, run.stderr


@pytest.mark.parametrize(
    "argv", [["--help"], ["train", "--help"], ["--tf-logs", "data", "synthetic", "--help"]]
)
def test_help_answers_without_importing_tensorflow(argv):
    code = (
        "import sys\nfrom spinenet_tf.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        "print('loaded:', sorted(name for name in ('tensorflow', 'keras', 'jax') if name in sys.modules))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "usage: spinenet" in run.stdout and run.stdout.endswith("loaded: []\n"), run.stdout + run.stderr


def test_the_package_exports_load_on_first_use():
    code = (
        "import sys, spinenet_tf, spinenet_tf.specs\n"
        "print('keras' in sys.modules, spinenet_tf.BlockSpec is spinenet_tf.specs.BlockSpec, "
        "hasattr(spinenet_tf, 'Nothing'), set(spinenet_tf.__all__) <= set(dir(spinenet_tf)))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.stdout == "False True False True\n", run.stdout + run.stderr
