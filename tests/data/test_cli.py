import json

import pytest

from spinenet_tf.cli import main
from tests.data.coco_fixture import write_coco


def test_coco_to_tfrecord_command_reports_problems_and_writes_shards(tmp_path, capsys):
    images_dir, annotations = write_coco(
        tmp_path, [("a.png", 32, 32, [(1, [2, 2, 8, 8], 0)]), ("b.png", 32, 32, [])]
    )
    out = tmp_path / "records" / "train"
    main(
        [
            "data",
            "coco-to-tfrecord",
            "--images",
            str(images_dir),
            "--annotations",
            str(annotations),
            "--out",
            str(out),
            "--shards",
            "2",
        ]
    )
    printed = capsys.readouterr().out
    assert "1 x image kept as background only: no annotations" in printed
    assert "wrote 2 images to 2 shard(s)" in printed
    assert (tmp_path / "records" / "train-00001-of-00002.tfrecord").stat().st_size > 0


def test_coco_to_tfrecord_command_names_a_broken_file(tmp_path, capsys):
    (tmp_path / "bad.json").write_text(json.dumps({"images": []}))
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "data",
                "coco-to-tfrecord",
                "--images",
                str(tmp_path),
                "--annotations",
                str(tmp_path / "bad.json"),
                "--out",
                str(tmp_path / "x"),
            ]
        )
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and error.startswith("spinenet data coco-to-tfrecord: "), error
    assert "bad.json: key 'annotations' is missing" in error


def test_synthetic_command_writes_both_splits(tmp_path, capsys):
    main(
        [
            "data",
            "synthetic",
            "--out",
            str(tmp_path / "s"),
            "--num-train",
            "3",
            "--num-val",
            "2",
            "--seed",
            "1",
        ]
    )
    printed = capsys.readouterr().out
    assert "train: 3 images" in printed and "val: 2 images" in printed
    assert len(list((tmp_path / "s" / "train").glob("*.jpg"))) == 3
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "synthetic", "--out", str(tmp_path / "t"), "--num-train", "-1"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "spinenet data synthetic: num_train must be >= 0, got -1.\n"
