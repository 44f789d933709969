"""Named presets of the published SpineNet checkpoints: downloaded, converted once, cached.

The registry is data: each `Preset` names the archive, the code base that wrote it
(`convert.SOURCE_FORMATS`), the shipped experiment that builds its architecture and the
overrides that make it the one trained. `preset_model` downloads the archive (Keras'
`get_file`), extracts it, converts the checkpoint with `convert_checkpoint` and keeps the
result as `<cache>/<name>.keras`; later calls load that file and touch neither the
network nor TensorFlow's checkpoint reader. The detectors load as `RetinaNet`s, the
ImageNet classifiers as `ImageClassifier`s (1001 classes at 224 px, as trained); of the
Mask R-CNN presets, whose heads are not converted yet, only the backbone loads
(`preset_backbone`, `SpineNet.from_preset`) and the task model refuses with a message
naming what is missing.

This module imports neither Keras nor TensorFlow at import time: `spinenet presets` lists
the registry without them.
"""

import contextlib
import dataclasses
import glob
import os
import shutil
import socket
import tarfile
import zipfile

from spinenet_tf import cache
from spinenet_tf.errors import ModelError

MODEL_GARDEN_URL = "https://storage.googleapis.com/tf_model_garden/vision/spinenet/"
TPU_URL = "https://storage.googleapis.com/cloud-tpu-checkpoints/detection/"
# The tensorflow/tpu "plain" RetinaNets: ReLU, no stochastic depth (MODEL_ZOO.md's 350-epoch rows).
PLAIN = (
    "model.backbone.activation=relu",
    "model.backbone.stochastic_depth_rate=0.0",
    "model.detector.activation=relu",
)
# task -> (the class that loads it, what it is; or None while its heads are not converted, what
# that needs).
TASKS = {
    "retinanet": ("RetinaNet", "a RetinaNet"),
    "maskrcnn": (None, "the conversion of its Mask R-CNN heads"),
    "classification": ("ImageClassifier", "an ImageNet classifier"),
}
SPINENET49S_NOTE = "published 11.9 M counts 256 endpoint filters; the checkpoint's code builds 128: 11.3 M"
# A stalled connection fails after this long instead of hanging (it bounds each socket
# operation, not the whole download).
SOCKET_TIMEOUT_S = 30
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


@dataclasses.dataclass(frozen=True)
class Preset:
    """One published checkpoint and how to build the model it fits.

    `published_ap`: COCO val2017 box AP (ImageNet top-1 for classifiers), `params_m`:
    the parameters in millions, both as published. `sha256`: the archive's, checked by
    the download when known.
    """

    name: str
    task: str
    source_format: str
    url: str
    sha256: str | None
    experiment: str  # shipped experiment (or YAML); a RetinaNet one for tasks not available
    overrides: tuple
    image_size: int
    published_ap: float
    params_m: float
    notes: str = ""

    @property
    def available(self):
        return TASKS[self.task][0] is not None

    @property
    def metric(self):
        return "top-1" if self.task == "classification" else "box AP"

    def check_loadable(self, class_name=None):
        """Raises ModelError if the task is missing, or (given) `class_name` does not load this task."""
        loader, what = TASKS[self.task]
        if loader is None:
            raise ModelError(
                f"Preset {self.name} needs {what}, not in spinenet_tf yet; its backbone loads with "
                f"SpineNet.from_preset({self.name!r})."
            )
        if class_name is not None and class_name != loader:
            raise ModelError(f"Preset {self.name} is {what}; load it with {loader}.from_preset.")


def _presets(task, source_format, base_url, rows, overrides=(), experiment="retinanet/spinenet{}_coco"):
    """Presets from rows (name, archive under `base_url`, model id, input size, published metric,
    params in M [, more overrides]). The model id's shipped `experiment` gives the architecture
    (for tasks not available, the RetinaNet one gives their backbone's: only it loads, see
    `preset_backbone`); `overrides`, then the row's, the settings the checkpoint was trained with."""
    return tuple(
        Preset(
            name,
            task,
            source_format,
            base_url + archive,
            None,  # unknown: the registry was written without network access; fill in once hashed
            experiment.format(model_id),
            (*overrides, *(more[0] if more else ())),
            image_size,
            metric,
            params,
            SPINENET49S_NOTE if task == "retinanet" and model_id == "49s" else "",
        )
        for name, archive, model_id, image_size, metric, params, *more in rows
    )


PRESETS = (
    # TF Model Garden (official/vision MODEL_GARDEN.md): swish, stochastic depth 0.2, 500 epochs.
    *_presets(
        "retinanet",
        "model-garden",
        MODEL_GARDEN_URL,
        [
            ("retinanet_spinenet49_coco", "spinenet-49-i640.tar.gz", "49", 640, 44.2, 28.5),
            ("retinanet_spinenet96_coco", "spinenet-96-i1024.tar.gz", "96", 1024, 48.5, 43.0),
            ("retinanet_spinenet143_coco", "spinenet-143-i1280.tar.gz", "143", 1280, 50.0, 67.0),
        ],
    ),
    # tensorflow/tpu (models/official/detection/MODEL_ZOO.md), swish + stochastic depth, 500 epochs.
    *_presets(
        "retinanet",
        "tpu",
        TPU_URL + "retinanet/",
        [
            ("retinanet_spinenet49s_coco_tpu", "spinenet-49S-best.tar.gz", "49s", 640, 41.5, 11.9),
            ("retinanet_spinenet49_coco_tpu", "spinenet-49-best.tar.gz", "49", 640, 44.3, 28.5),
            ("retinanet_spinenet96_coco_tpu", "spinenet-96-best.tar.gz", "96", 1024, 48.5, 43.0),
            (
                "retinanet_spinenet143_coco_tpu",
                "spinenet-143-best.tar.gz",
                "143",
                1280,
                50.6,
                67.0,
                ("model.backbone.stochastic_depth_rate=0.16",),  # its config's init_drop_connect_rate
            ),
            ("retinanet_spinenet190_coco_tpu", "spinenet-190-best.tar.gz", "190", 1280, 52.0, 163.6),
        ],
    ),
    # tensorflow/tpu, plain: ReLU, no stochastic depth, 350 epochs.
    *_presets(
        "retinanet",
        "tpu",
        TPU_URL + "retinanet/",
        [
            ("retinanet_spinenet49s_relu_coco_tpu", "spinenet-49S.tar.gz", "49s", 640, 39.5, 11.9),
            ("retinanet_spinenet49_relu_coco_tpu", "spinenet-49.tar.gz", "49", 640, 42.8, 28.5),
            ("retinanet_spinenet96_relu_coco_tpu", "spinenet-96.tar.gz", "96", 1024, 46.7, 43.0),
            ("retinanet_spinenet143_relu_coco_tpu", "spinenet-143.tar.gz", "143", 1280, 48.0, 67.0),
        ],
        PLAIN,
    ),
    # tensorflow/tpu Mask R-CNN (published: box AP; BN epsilon 1e-3, momentum 0.99; ReLU but 190's
    # swish + stochastic depth): the same SpineNet builder, so their backbones load; their heads
    # need converting.
    *_presets(
        "maskrcnn",
        "tpu",
        TPU_URL + "maskrcnn/",
        [
            ("maskrcnn_spinenet49_coco_tpu", "spinenet-49.tar.gz", "49", 640, 42.8, 40.8, PLAIN),
            ("maskrcnn_spinenet96_coco_tpu", "spinenet-96.tar.gz", "96", 1024, 46.8, 55.2, PLAIN),
            ("maskrcnn_spinenet143_coco_tpu", "spinenet-143.tar.gz", "143", 1280, 48.7, 79.2, PLAIN),
            ("maskrcnn_spinenet190_coco_tpu", "spinenet-190.tar.gz", "190", 1536, 52.0, 168.2),
        ],
        ("model.backbone.norm_epsilon=1.0e-3", "model.backbone.norm_momentum=0.99"),
    ),
    # tensorflow/tpu ImageNet classifiers (top-1): the shipped experiments are their configs
    # (swish, stochastic depth 0.2, BN 1e-5 / 0.9, head aggregation "all", 1001 classes, 224 px).
    *_presets(
        "classification",
        "tpu",
        TPU_URL + "classification/",
        [
            (
                "classification_spinenet49_imagenet_tpu",
                "spinenet-49-best-imagenet.tar.gz",
                "49",
                224,
                78.1,
                22.1,
            ),
            (
                "classification_spinenet96_imagenet_tpu",
                "spinenet-96-best-imagenet.tar.gz",
                "96",
                224,
                79.4,
                36.5,
            ),
            (
                "classification_spinenet143_imagenet_tpu",
                "spinenet-143-best-imagenet.tar.gz",
                "143",
                224,
                80.1,
                60.5,
            ),
            (
                "classification_spinenet190_imagenet_tpu",
                "spinenet-190-best-imagenet.tar.gz",
                "190",
                224,
                80.8,
                127.1,
            ),
        ],
        experiment="classification/spinenet{}_imagenet",
    ),
)


def preset_names():
    """The names of all presets, loadable or not (see `Preset.available`)."""
    return [preset.name for preset in PRESETS]


def get_preset(name):
    for preset in PRESETS:
        if preset.name == name:
            return preset
    raise ModelError(f"Unknown preset {name!r}; the presets are: {', '.join(preset_names())}.")


def preset_weights(name, checkpoint=None, cache_dir=None):
    """What preset `name` gives: its task model, or the backbone alone where its heads are not
    converted (for `model.init_checkpoint`)."""
    if get_preset(name).available:
        return preset_model(name, checkpoint, cache_dir)
    return preset_backbone(name, checkpoint, cache_dir)


def preset_backbone(name, checkpoint=None, cache_dir=None):
    """The SpineNet of preset `name`, with the published weights: the task model's backbone, at
    the preset's input size (a classifier's at 224 px), or for a task whose heads are not
    converted (Mask R-CNN) its backbone alone, converted with `modules="backbone"` at the
    RetinaNet experiment's input size and cached as `<cache_dir>/<name>.backbone.keras`."""
    preset = get_preset(name)
    if preset.available:
        return preset_model(name, checkpoint, cache_dir).backbone
    cache_dir = os.fspath(cache_dir or cache.cache_dir("presets"))
    converted = os.path.join(cache_dir, f"{name}.backbone.keras")
    if not os.path.exists(converted):
        _convert(preset, checkpoint, cache_dir, converted, modules="backbone")
    return _load_converted(converted)


def preset_model(name, checkpoint=None, cache_dir=None):
    """The task model (RetinaNet, ImageClassifier) of preset `name`, with the published weights.

    The first call downloads the archive into `cache_dir` (default
    `~/.cache/spinenet_tf/presets`), converts it and saves `<cache_dir>/<name>.keras`;
    later calls load that file. `checkpoint`: a local copy of the preset's archive
    (.tar.gz), its checkpoint prefix or a directory holding it, used instead of the
    download (for machines without network) when the preset is not converted yet.
    """
    preset = get_preset(name)
    preset.check_loadable()
    cache_dir = os.fspath(cache_dir or cache.cache_dir("presets"))
    converted = os.path.join(cache_dir, f"{name}.keras")
    if not os.path.exists(converted):
        _convert(preset, checkpoint, cache_dir, converted)
    return _load_converted(converted)


def _convert(preset, checkpoint, cache_dir, converted, modules="all"):
    """Downloads (unless `checkpoint`), extracts and converts (the backbone alone for
    `modules="backbone"`); the archive and its files are deleted once the conversion is saved."""
    from spinenet_tf.pretrained.convert import convert_checkpoint

    os.makedirs(cache_dir, exist_ok=True)  # get_file falls back to /tmp for a missing directory
    downloaded = checkpoint is None
    archive = _download(preset, cache_dir) if downloaded else os.fspath(checkpoint)
    extracted = None
    if downloaded or archive.endswith(ARCHIVE_SUFFIXES):
        extracted = os.path.join(cache_dir, preset.name)
        try:
            _extract(archive, extracted)
        except ModelError:
            if downloaded:  # a partial download: the next call fetches it again
                os.remove(archive)
            raise
        source = _find_checkpoint(archive, extracted)
    else:
        source = archive
    partial = converted.removesuffix(".keras") + ".partial.keras"
    model, report = convert_checkpoint(
        source, preset.source_format, preset.experiment, modules=modules, overrides=preset.overrides
    )
    (model if modules == "all" else model.backbone).save(partial)
    os.replace(partial, converted)
    print(f"preset {preset.name}: {report.summary()}\nsaved the converted model as {converted}")
    if extracted is not None:
        shutil.rmtree(extracted, ignore_errors=True)
    if downloaded:
        os.remove(archive)


@contextlib.contextmanager
def _socket_timeout(seconds):
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _download(preset, cache_dir):
    """The archive's path in `cache_dir`; a failed download is one ModelError line."""
    import keras

    file_name = os.path.basename(preset.url)
    loader = TASKS[preset.task][0] or "SpineNet"
    try:
        with _socket_timeout(SOCKET_TIMEOUT_S):
            return keras.utils.get_file(
                f"{preset.name}.tar.gz",
                preset.url,
                file_hash=preset.sha256,
                cache_dir=cache_dir,
                cache_subdir="",
            )
    except Exception as error:  # get_file raises a bare Exception for URL errors
        reason = " ".join(str(error).split())
        raise ModelError(
            f"Preset {preset.name}: cannot download {preset.url} ({reason}). Without network, fetch "
            f"{file_name} elsewhere and pass it: {loader}.from_preset({preset.name!r}, "
            f'checkpoint="path/to/{file_name}") or spinenet predict --preset {preset.name} '
            f"--checkpoint path/to/{file_name}."
        ) from None


def _extract(archive, directory):
    """Extracts a tar archive of plain files and folders into a fresh `directory`.

    Checked before anything is written: a member that is a link or device, or whose path
    leaves `directory` (absolute, ".."), is refused. Python >= 3.10.12 also applies
    tarfile's "data" filter, which enforces the same.
    """
    shutil.rmtree(directory, ignore_errors=True)
    root = os.path.realpath(directory)
    safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for member in members:
                target = os.path.realpath(os.path.join(root, member.name))
                if not (member.isfile() or member.isdir()) or os.path.commonpath([root, target]) != root:
                    raise ModelError(
                        f"{archive}: refused to extract {member.name!r} (a link, a device or a path "
                        "outside the extraction folder); not a checkpoint archive."
                    )
            tar.extractall(root, members, **safe)
    except (tarfile.TarError, EOFError, OSError) as error:
        shutil.rmtree(directory, ignore_errors=True)
        raise ModelError(f"{archive}: cannot extract it ({error}); a damaged or partial file?") from None


def _find_checkpoint(archive, directory):
    """The one TensorFlow checkpoint in an extracted archive, at any depth."""
    from spinenet_tf.pretrained.source import resolve_checkpoint

    folders = sorted({os.path.dirname(path) for path in glob.glob(f"{directory}/**/*.index", recursive=True)})
    if len(folders) != 1:
        raise ModelError(
            f"{archive}: expected one folder with a TensorFlow checkpoint (.index file), found "
            f"{len(folders)}; extract it and pass the checkpoint prefix as checkpoint=."
        )
    return resolve_checkpoint(folders[0])


def _load_converted(path):
    import keras

    from spinenet_tf import builders  # noqa: F401  registers the model classes load_model looks up

    try:
        return keras.saving.load_model(path)
    except (ValueError, OSError, TypeError, zipfile.BadZipFile) as error:
        raise ModelError(
            f"{path}: cannot load this converted preset ({' '.join(str(error).split())[:200]}); "
            "delete it to convert again."
        ) from None
