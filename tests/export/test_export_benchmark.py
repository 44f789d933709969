"""Smoke test: the export-formats benchmark runs on a tiny run and writes its section."""

import pytest

from benchmarks import export_formats


@pytest.mark.slow  # about a minute on 2 cores: `make test-all`
def test_export_formats_benchmark_writes_its_section(run_dir, tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    results = export_formats.main(
        [
            "--model-dir",
            str(run_dir),
            "--val-images",
            "2",
            "--calibration-images",
            "2",
            "--repeats",
            "1",
            "--formats",
            "SavedModel",
            "TFLite int8",
            "--out",
            str(out),
        ]
    )
    text = out.read_text()
    for name in ("SavedModel", "TFLite int8"):
        row = next(line for line in text.splitlines() if line.startswith(f"| {name} |"))
        size, milliseconds = (float(cell) for cell in row.split("|")[2:4])
        assert size > 0 and milliseconds > 0
        assert set(results[name]) >= {"AP", "AP50"}
    assert "AP on 2 images" in text.replace("\n", " ") and "TFLite fp16" not in text
    prose = text.replace("\n", " ")
    assert "AP / AP50 vs SavedModel" in text and "calibrates on 2 training images" in prose
