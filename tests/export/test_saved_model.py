"""SavedModel export: parity with Keras, self-contained loading, signatures, bad requests."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from spinenet_tf.export import export_saved_model, load_predictor
from tests.helpers import encode, random_image, spread_detector


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = spread_detector()
    base = tmp_path_factory.mktemp("export") / "tiny"
    path = export_saved_model(model, str(base), labels={1: "one", 2: "two"})
    return model, base, path, tf.saved_model.load(path)


def keras_detections(model, image):
    """The Keras model's own answer for one photo (it letterboxes it and maps boxes back)."""
    detections = model.predict_on_batch(image[None])
    count = int(detections["num_detections"][0])
    return detections["boxes"][0, :count], detections["scores"][0, :count], detections["classes"][0, :count]


def example_of(encoded):
    """A serialized tf.Example holding `encoded` as its image."""
    feature = tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded]))
    return tf.train.Example(
        features=tf.train.Features(feature={"image/encoded": feature})
    ).SerializeToString()


def assert_same_detections(outputs, index, expected):
    boxes, scores, classes = expected
    count = int(outputs["num_detections"][index])
    assert count == len(scores) > 10  # the spread head gives many detections
    np.testing.assert_array_equal(outputs["detection_classes"][index, :count], classes)
    np.testing.assert_allclose(outputs["detection_scores"][index, :count], scores, rtol=1e-5, atol=1e-6)
    tolerance = 1e-3 * max(1.0, float(np.abs(boxes).max()))  # 1e-3 px relative to the image scale
    np.testing.assert_allclose(outputs["detection_boxes"][index, :count], boxes, atol=tolerance, rtol=0)


def graph_op_types(signature, op_type):
    """The dtypes (attr T) of every `op_type` node of a loaded signature, its functions' included."""
    graph = signature.graph.as_graph_def()
    nodes = [*graph.node, *(node for function in graph.library.function for node in function.node_def)]
    return {tf.dtypes.as_dtype(node.attr["T"].type) for node in nodes if node.op == op_type}


# slow: 45 s on a CPU without AVX-512 BF16, which emulates bfloat16
@pytest.mark.slow
def test_bf16_export_convolves_in_bfloat16_and_answers_in_float32(exported, tmp_path):
    model, _, _, loaded = exported
    path = export_saved_model(model, str(tmp_path / "bf16"), quantize="bf16")
    serve = tf.saved_model.load(path).signatures["serving_default"]
    assert graph_op_types(serve, "Conv2D") == {tf.bfloat16}
    assert graph_op_types(loaded.signatures["serving_default"], "Conv2D") == {tf.float32}
    image = tf.constant(random_image(100, 120, seed=3)[None])
    outputs, expected = serve(images=image), loaded.signatures["serving_default"](images=image)
    assert {key: value.dtype for key, value in outputs.items()} == {
        key: value.dtype for key, value in expected.items()
    }
    # bfloat16 keeps 8 bits of mantissa: the best scores agree to about 1%.
    top = int(expected["num_detections"][0]) // 2
    np.testing.assert_allclose(
        outputs["detection_scores"][0, :top], expected["detection_scores"][0, :top], rtol=0, atol=0.02
    )


def test_export_writes_a_versioned_layout_with_labels(exported):
    _, base, path, _ = exported
    assert path == os.path.join(str(base), "1")
    assert os.path.exists(os.path.join(path, "saved_model.pb"))
    assert load_predictor(str(base)).labels == {1: "one", 2: "two"}  # the base dir resolves to version 1
    assert not [name for name in os.listdir(base) if name.endswith(".partial")]


def test_three_signatures_equal_the_keras_model(exported):
    model, _, _, loaded = exported
    tall, wide = random_image(150, 90, seed=1), random_image(70, 200, seed=2)
    expected_tall, expected_wide = keras_detections(model, tall), keras_detections(model, wide)

    outputs = loaded.signatures["serving_default"](images=tf.constant(np.stack([tall, tall])))
    assert_same_detections(outputs, 0, expected_tall)
    assert_same_detections(outputs, 1, expected_tall)

    outputs = loaded.signatures["serve_image_bytes"](image_bytes=tf.constant([encode(tall), encode(wide)]))
    assert_same_detections(outputs, 0, expected_tall)
    assert_same_detections(outputs, 1, expected_wide)

    outputs = loaded.signatures["serve_tf_example"](examples=tf.constant([example_of(encode(wide))]))
    assert_same_detections(outputs, 0, expected_wide)
    assert outputs["detection_boxes"].shape == (1, 100, 4)
    assert outputs["detection_classes"].dtype == tf.int32


# Photo sizes that are no multiple of the model's 128 px: wide, small and tall.
PHOTO_SIZES = [(300, 500), (97, 61), (200, 130)]

JAX_PREDICT = """
import sys
sys.modules["tensorflow"] = None  # the model code, preprocessing included, needs no TensorFlow
import keras, numpy as np
import spinenet_tf
assert keras.backend.backend() == "jax"
model_file, photos_file, out = sys.argv[1:]
photos = list(np.load(photos_file).values())
model = keras.saving.load_model(model_file)
listed = model.predict(photos, verbose=0)
alone = [model.predict(photo[None], verbose=0) for photo in photos]
np.savez(out, **{f"list_{k}": v for k, v in listed.items()},
         **{f"alone{i}_{k}": v for i, one in enumerate(alone) for k, v in one.items()})
"""


def serving_names(detections):
    return {f"detection_{key}": value for key, value in detections.items() if key != "num_detections"} | {
        "num_detections": detections["num_detections"]
    }


def test_predict_on_photos_equals_the_saved_model_on_tensorflow_and_jax(exported, tmp_path):
    """uint8 photos of three sizes: Keras predict (a list of them, and each alone) on TensorFlow
    and on JAX gives the SavedModel's detections, boxes in each photo's own pixels."""
    model, _, _, loaded = exported
    photos = [random_image(height, width, seed=n) for n, (height, width) in enumerate(PHOTO_SIZES)]
    served = [loaded.signatures["serving_default"](images=tf.constant(photo[None])) for photo in photos]
    expected = [keras_detections(model, photo) for photo in photos]
    listed = serving_names(model.predict(photos, verbose=0))
    for n, photo in enumerate(photos):
        assert_same_detections(served[n], 0, expected[n])
        assert_same_detections(listed, n, expected[n])
        assert expected[n][0][:, 2].max() > 0.6 * photo.shape[0]  # boxes reach far into the photo...
        assert (expected[n][0][:, 2:] <= np.array(photo.shape[:2])).all()  # ...and stay inside it

    model.save(tmp_path / "model.keras")
    np.savez(tmp_path / "photos.npz", *photos)
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    arguments = [str(tmp_path / name) for name in ("model.keras", "photos.npz", "jax.npz")]
    result = subprocess.run(
        [sys.executable, "-c", JAX_PREDICT, *arguments], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    on_jax = np.load(tmp_path / "jax.npz")
    for n in range(len(photos)):
        for prefix in ("list_", f"alone{n}_"):
            index = n if prefix == "list_" else 0
            answer = {key[len(prefix) :]: on_jax[key] for key in on_jax.files if key.startswith(prefix)}
            assert_same_detections(serving_names(answer), index, expected[n])


def test_loads_and_runs_in_a_process_without_spinenet_tf_or_keras(exported, tmp_path):
    model, _, path, _ = exported
    image = random_image(96, 120, seed=3)
    np.save(tmp_path / "image.npy", image)
    script = textwrap.dedent(
        f"""
        import importlib.abc, importlib.machinery, json, sys
        import numpy as np

        class Hide(importlib.abc.MetaPathFinder, importlib.abc.Loader):
            # Finds spinenet_tf and keras but refuses to load them (TF only probes for keras).
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] in ("spinenet_tf", "keras"):
                    return importlib.machinery.ModuleSpec(name, self)

            def create_module(self, spec):
                raise ImportError(f"{{spec.name}} is hidden")

        sys.meta_path.insert(0, Hide())
        import tensorflow as tf
        for hidden in ("spinenet_tf", "keras"):
            try:
                __import__(hidden)
                sys.exit(hidden + " was importable")
            except ImportError:
                pass
        loaded = tf.saved_model.load({str(path)!r})
        image = np.load({str(tmp_path / "image.npy")!r})[None]
        out = loaded.signatures["serving_default"](images=tf.constant(image))
        print(json.dumps({{k: v.numpy().tolist() for k, v in out.items()}}))
        assert not any(m.split(".")[0] in ("spinenet_tf", "keras") for m in sys.modules)
        """
    )
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=environment,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    import json

    outputs = {k: np.array(v) for k, v in json.loads(result.stdout.strip().splitlines()[-1]).items()}
    assert_same_detections(outputs, 0, keras_detections(model, image))


def test_saved_model_cli_lists_the_signatures(exported):
    _, _, path, _ = exported
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    shown = subprocess.run([cli, "show", "--dir", path, "--all"], capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr[-2000:]
    for signature, input_name in [
        ("serving_default", "images"),
        ("serve_image_bytes", "image_bytes"),
        ("serve_tf_example", "examples"),
    ]:
        assert f"signature_def['{signature}']" in shown.stdout
        assert f"inputs['{input_name}']" in shown.stdout
    for output in ("detection_boxes", "detection_scores", "detection_classes", "num_detections"):
        assert f"outputs['{output}']" in shown.stdout


def error_of(call):
    with pytest.raises((tf.errors.InvalidArgumentError, TypeError, ValueError)) as info:
        call()
    return str(info.value)


def test_bad_requests_get_errors_naming_the_problem(exported):
    _, _, _, loaded = exported
    serve = loaded.signatures["serving_default"]
    serve_bytes = loaded.signatures["serve_image_bytes"]

    message = error_of(lambda: serve(images=tf.zeros([1, 64, 64, 3], tf.float32)))
    assert "expected to be a uint8 tensor but is a float tensor" in message
    message = error_of(lambda: serve(images=tf.zeros([64, 64, 3], tf.uint8)))
    assert "Shape of tensor images [64,64,3] is not compatible with expected shape [?,?,?,3]" in message
    message = error_of(lambda: serve(images=tf.zeros([1, 64, 64, 4], tf.uint8)))
    assert "Shape of tensor images [1,64,64,4] is not compatible with expected shape [?,?,?,3]" in message
    message = error_of(lambda: serve(images=tf.zeros([1, 0, 64, 3], tf.uint8)))
    assert "images: an image has zero height or width" in message

    good = encode(random_image(64, 64))
    message = error_of(lambda: serve_bytes(image_bytes=tf.constant([good, good, b"not an image at all"])))
    assert "image_bytes[2] is not a JPEG, PNG, GIF or BMP image (19 bytes" in message
    message = error_of(lambda: serve_bytes(image_bytes=tf.constant([b"", good])))
    assert "image_bytes[0] is not a JPEG, PNG, GIF or BMP image (0 bytes" in message
    serve_examples = loaded.signatures["serve_tf_example"]
    message = error_of(lambda: serve_examples(examples=tf.constant([b"\x00garbage"])))
    assert "Could not parse example input" in message
    message = error_of(lambda: serve_examples(examples=tf.constant([example_of(b"GIF")])))
    assert "image/encoded of examples[0] is not a JPEG, PNG, GIF or BMP image (3 bytes" in message
