"""Published reference figures that our models are checked against, and the configs they describe.

Plain data, used by the tests (exact parameter counts) and by the benchmark tables:

- `MODEL_GARDEN_BACKBONE_PARAMS`: trainable parameters of TF Model Garden's SpineNet
  (`official.vision.modeling.backbones.spinenet`, tf-models-official 2.20), outputs
  P3..P7, built with its scaling table (the paper's, plus 143L).
- `PAPER_RESOLUTION`: the input size of each variant in the paper's COCO RetinaNet
  results (Du et al., "SpineNet", CVPR 2020); 143L, which only Model Garden's scaling
  table has, at 143's.
- `DETECTOR_REFERENCE`: RetinaNet with COCO's 91 outputs (class 0 background).
  "params": Model Garden 2.20's RetinaNet built from `detector_config(name)`, to the
  integer, except R50-FPN: the model zoo's rounded 34.0M. "gmacs": the Model Garden
  model zoo's "FLOPs" column (multiply-adds), None where it has no row: its 49S row was
  measured with 256 endpoint filters (our "49S-256"), and 143L appears only in Model
  Garden's scaling table. "size": the input size of that row.
- `TWO_STAGE_REFERENCE`: Mask R-CNN, Faster R-CNN (no mask head) and Cascade R-CNN with
  91 outputs, Model Garden's `maskrcnn_spinenet_coco` / `cascadercnn_spinenet_coco`
  heads. "params": Model Garden 2.20's model, to the integer (96 and 143 built with that
  recipe's heads by `benchmarks.model_garden_two_stage --model-id`; the zoo rounds them to
  55.2 M / 79.2 M); "gmacs": the zoo's "FLOPs" (1000 proposals through each box
  head, 100 detections through the mask head), None where it has no row.
- `CLASSIFIER_REFERENCE`: the tensorflow/tpu model zoo's SpineNet ImageNet classifiers
  (224 px, 1001 outputs, the head's aggregation "all"): "params" and "gmacs" (its
  "FLOPs" column, multiply-adds) as published, rounded to 0.1 M / 0.1 B.
- `MOBILE_REFERENCE`: RetinaNet on Mobile SpineNet with 91 outputs, Model Garden's
  `retinanet_mobile_coco` (separable head of 4 convs, `mobile_config(model_id)`).
  "params" / "backbone_params": Model Garden 2.20's detector / backbone, to the integer
  (`benchmarks.model_garden_mobile`); "gmacs": the zoo's "FLOPs", None where it has no
  row; "size" and "num_filters": that row's input size and head width.
"""

MODEL_GARDEN_BACKBONE_PARAMS = {
    "49S": 9_089_215,
    "49": 21_831_488,
    "96": 36_262_976,
    "143": 60_247_616,
    "143L": 100_796_257,
    "190": 126_587_664,
}

PAPER_RESOLUTION = {"49S": 640, "49": 640, "96": 1024, "143": 1280, "143L": 1280, "190": 1280}

DETECTOR_REFERENCE = {
    "49S": {"params": 11_265_942, "gmacs": None, "size": 640},
    "49S-256": {"params": 11_944_598, "gmacs": 33.8, "size": 640},
    "49": {"params": 28_543_383, "gmacs": 85.4, "size": 640},
    "96": {"params": 42_974_871, "gmacs": 265.4, "size": 1024},
    "143": {"params": 66_959_511, "gmacs": 524.0, "size": 1280},
    "143L": {"params": 107_508_152, "gmacs": None, "size": 1280},
    "190": {"params": 163_637_351, "gmacs": 1885.0, "size": 1280},
    "R50-FPN": {"params": 34_000_000, "gmacs": 97.0, "size": 640},
}


def detector_config(name):
    """The `build_detector` config of a row of DETECTOR_REFERENCE: 91 classes, the paper's heads
    (49S: 4x128 filters, 190: 7x512, others 4x256)."""
    if name == "R50-FPN":
        return {"backbone": {"type": "resnet50"}, "num_classes": 91}
    model_id = name.split("-")[0]
    backbone = {"type": "spinenet", "model_id": model_id}
    if name == "49S-256":
        backbone["endpoints_num_filters"] = 256
    head = {"49S": {"num_filters": 128}, "190": {"num_convs": 7, "num_filters": 512}}.get(model_id, {})
    return {"backbone": backbone, "num_classes": 91, **head}


TWO_STAGE_REFERENCE = {
    "maskrcnn-49": {"params": 40_753_521, "gmacs": 215.7, "size": 640},
    "fasterrcnn-49": {"params": 38_104_854, "gmacs": None, "size": 640},
    "cascadercnn-49": {"params": 71_000_263, "gmacs": None, "size": 640},
    "cascadercnn-49-nomask": {"params": 68_351_596, "gmacs": None, "size": 640},
    "maskrcnn-96": {"params": 55_185_009, "gmacs": 315.0, "size": 1024},
    "maskrcnn-143": {"params": 79_169_649, "gmacs": 498.8, "size": 1280},
}


def two_stage_config(name):
    """The `build_detector` config of a row of TWO_STAGE_REFERENCE."""
    kind, model_id, *variant = name.split("-")
    config = {"type": "maskrcnn", "backbone": {"type": "spinenet", "model_id": model_id}, "num_classes": 91}
    if kind == "fasterrcnn" or variant == ["nomask"]:
        config["include_mask"] = False
    if kind == "cascadercnn":
        config.update(cascade_iou_thresholds=[0.6, 0.7], class_agnostic_boxes=True)
    return config


CLASSIFIER_REFERENCE = {
    "49": {"params": 22.1e6, "gmacs": 3.5, "size": 224},
    "96": {"params": 36.5e6, "gmacs": 5.7, "size": 224},
    "143": {"params": 60.5e6, "gmacs": 9.1, "size": 224},
    "190": {"params": 127.1e6, "gmacs": 19.1, "size": 224},
}


MOBILE_REFERENCE = {
    "49": {"params": 2_337_579, "backbone_params": 2_268_708, "gmacs": 1.0, "size": 384, "num_filters": 48},
    "49S": {"params": 1_030_653, "backbone_params": 975_678, "gmacs": None, "size": 384, "num_filters": 40},
    "49XS": {"params": 872_711, "backbone_params": 842_456, "gmacs": None, "size": 256, "num_filters": 24},
}


def mobile_config(model_id):
    """The `build_detector` config of a row of MOBILE_REFERENCE (swish, as the recipe)."""
    row = MOBILE_REFERENCE[model_id]
    return {
        "backbone": {"type": "spinenet_mobile", "model_id": model_id},
        "num_classes": 91,
        "num_filters": row["num_filters"],
        "use_separable_conv": True,
        "activation": "swish",
    }
