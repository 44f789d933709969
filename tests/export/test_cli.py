"""`spinenet export` from a training run and `spinenet predict` on its exports."""

import json

import pytest
from PIL import Image

from spinenet_tf.cli import main
from tests.helpers import random_image


def test_export_and_predict_with_both_formats(run_dir, tmp_path, capsys):
    out = tmp_path / "export" / "tiny"
    main(["export", "--model-dir", str(run_dir), "--out", str(out)])
    main(["export", "--model-dir", str(run_dir), "--out", str(out)])  # a second version beside it
    tflite = ["--format", "tflite", "--quantize", "int8", "--calibration-images", "4"]
    main(["export", "--model-dir", str(run_dir), "--out", str(out), *tflite])
    printed = capsys.readouterr().out
    assert f"ckpt-4 -> {out / '1'}" in printed and f"-> {out / '2'}" in printed
    assert (out / "model_int8.tflite").stat().st_size > 0
    labels = json.loads((out / "labels.json").read_text())["labels"]
    assert json.loads((out / "2" / "assets.extra" / "labels.json").read_text())["labels"] == labels
    assert len(labels) == 6 and all(isinstance(name, str) and name for name in labels.values())

    images = []
    for i, (height, width) in enumerate([(96, 128), (120, 80)]):
        path = tmp_path / f"image{i}.png"
        Image.fromarray(random_image(height, width, seed=i)).save(path)
        images.append(str(path))
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    for model in (out, out / "model_int8.tflite"):
        predictions = tmp_path / f"predictions_{model.name}"
        with pytest.raises(SystemExit, match="1 of 3 images could not be read"):
            main(
                [
                    "predict",
                    "--model",
                    str(model),
                    *images,
                    str(corrupt),
                    "--out",
                    str(predictions),
                    "--min-score",
                    "0.0",
                ]
            )
        assert f"{corrupt}: cannot read it as an image" in capsys.readouterr().err
        result = json.loads((predictions / "detections.json").read_text())
        assert [entry["image"] for entry in result["images"]] == images
        for entry, (height, width) in zip(result["images"], [(96, 128), (120, 80)]):
            assert (entry["height"], entry["width"]) == (height, width)
            assert len(entry["detections"]) > 10
            for detection in entry["detections"]:
                ymin, xmin, ymax, xmax = detection["box_yxyx"]
                assert 0 <= ymin <= ymax <= height and 0 <= xmin <= xmax <= width
                assert detection["label"] == labels[str(detection["class_id"])]
        for i, (height, width) in enumerate([(96, 128), (120, 80)]):
            with Image.open(predictions / f"image{i}.png") as drawn:
                assert drawn.size == (width, height)


def test_export_errors_name_the_problem(run_dir, tmp_path):
    with pytest.raises(SystemExit, match="config.yaml not found"):
        main(["export", "--model-dir", str(tmp_path), "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="--format saved_model takes --quantize none or bf16, not fp16"):
        main(["export", "--model-dir", str(run_dir), "--out", str(tmp_path / "x"), "--quantize", "fp16"])
    with pytest.raises(SystemExit, match="neither a .tflite file nor a SavedModel directory"):
        main(["predict", "--model", str(tmp_path / "missing"), "a.png", "--out", str(tmp_path / "p")])
