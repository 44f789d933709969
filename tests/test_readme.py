"""README's Python examples run as written, in order, as a user would paste them."""

import os
import re
import subprocess
import sys

import pytest

from spinenet_tf.data.synthetic import write_synthetic_coco

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def python_examples():
    """Every Python block but the presets' (they download the published archives: this machine
    may have no network; tests/pretrained/test_presets.py runs that path on a local archive)."""
    with open(README) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), flags=re.DOTALL)
    return [block for block in blocks if "from_preset(" not in block]


def test_readme_has_the_examples_this_test_runs():
    examples = python_examples()
    assert len(examples) >= 3
    assert any("detector.predict(" in example for example in examples)


@pytest.mark.slow
def test_readme_python_examples_run_as_written(tmp_path):
    # The Data example reads the set `spinenet data synthetic --out data/synthetic` writes
    # (smaller here: the example only reads its paths).
    write_synthetic_coco(str(tmp_path / "data" / "synthetic"), num_train=8, num_val=8, seed=0)
    script = "\n".join(python_examples())
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": os.path.dirname(README)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    printed = result.stdout
    assert "'P3': (2, 80, 80, 256)" in printed and "'P7': (2, 5, 5, 256)" in printed
    assert "trainable_params=21831488" in printed
    assert "(2, 100, 4)" in printed
    assert "(1, 100, 28, 28)" in printed  # Mask R-CNN masks
    assert "trainable_params=22088745" in printed  # the SpineNet-49 ImageNet classifier at 224
