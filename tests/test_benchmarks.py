"""Smoke tests: each benchmark script runs on a tiny config and writes its section."""

from benchmarks import backbone_table, detector_table, input_pipeline, target_assignment
from benchmarks.report import write_section


def test_backbone_table_writes_its_section(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# Benchmarks\n\n<!-- section:other -->\nkept\n<!-- /section:other -->\n")
    backbone_table.main(["--models", "49S", "--out", str(out)])
    text = out.read_text()
    assert "| SpineNet-49S | 0.65 | 0.5 | 1 | 128 | 640 | 9,089,215 | 9,089,215 | +0 |" in text
    assert "Command: `python" in text and "kept" in text


def test_sections_are_replaced_not_duplicated(tmp_path):
    out = tmp_path / "B.md"
    write_section("x", "Title", "first", out)
    write_section("x", "Title", "second", out)
    text = out.read_text()
    assert text.count("<!-- section:x -->") == 1 and "second" in text and "first" not in text


def test_detector_table_writes_its_section(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    detector_table.main(["--models", "49S", "--out", str(out)])
    assert "| 49S | 640 | 11,265,942 | 11,265,942 | +0 |" in out.read_text()


def test_target_assignment_benchmark_writes_its_section(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    target_assignment.main(["--size", "128", "--batch", "1", "--boxes", "4", "--out", str(out)])
    text = out.read_text()
    assert "| anchors at 128 px | 3,069 |" in text  # 9 x (16^2 + 8^2 + 4^2 + 2^2 + 1)
    assert "ms/image" in text


def test_input_pipeline_benchmark_writes_its_section(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    input_pipeline.main(
        ["--images", "4", "--size", "64", "--batch", "2", "--batches", "2", "--out", str(out)]
    )
    rows = [
        line
        for line in out.read_text().splitlines()
        if line.startswith("| COCO") or line.startswith("| TFRecord")
    ]
    assert len(rows) == 4 and all(float(row.rsplit("|", 2)[1]) > 0 for row in rows)
