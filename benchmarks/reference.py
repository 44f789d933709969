"""Published reference figures that our models are checked against."""

# Trainable parameters of official.vision.modeling.backbones.spinenet
# (tf-models-official 2.20), outputs levels 3..7, the paper's scaling table.
MODEL_GARDEN_BACKBONE_PARAMS = {
    "49S": 9_089_215,
    "49": 21_831_488,
    "96": 36_262_976,
    "143": 60_247_616,
    "143L": 100_796_257,
    "190": 126_587_664,
}

# Input size of each variant in the paper's COCO results.
PAPER_RESOLUTION = {"49S": 640, "49": 640, "96": 1024, "143": 1280, "143L": 1280, "190": 1280}
