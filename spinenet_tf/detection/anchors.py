"""Multi-level anchor boxes, laid out exactly as the RetinaNet head's outputs.

Order: level by level; within a level row-major over the feature map; within a
location `num_scales` octave scales (outer) times the aspect ratios (inner). Boxes are
[ymin, xmin, ymax, xmax] in input pixels, centred at (k + 0.5) * stride. Anchor sizes
are `anchor_size * stride * 2**(s / num_scales)`; aspect ratio = width / height.
"""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class AnchorSpec:
    min_level: int = 3
    max_level: int = 7
    num_scales: int = 3
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    anchor_size: float = 3.0

    @property
    def anchors_per_location(self):
        return self.num_scales * len(self.aspect_ratios)


def generate_anchors(image_size, spec=AnchorSpec()):
    """Anchors for an (height, width) input as a float32 array [num_anchors, 4]."""
    height, width = image_size
    per_level = []
    for level in range(spec.min_level, spec.max_level + 1):
        stride = 2**level
        # Ceil: a 'same'-padded stride-2 pyramid has ceil(size / stride) positions.
        ys = stride / 2 + stride * np.arange(-(-height // stride))
        xs = stride / 2 + stride * np.arange(-(-width // stride))
        centre_y, centre_x = np.meshgrid(ys, xs, indexing="ij")
        half_sizes = []
        for scale in range(spec.num_scales):
            base = spec.anchor_size * stride * 2 ** (scale / spec.num_scales)
            for ratio in spec.aspect_ratios:
                half_sizes.append((base * ratio**-0.5 / 2, base * ratio**0.5 / 2))
        half_h, half_w = np.array(half_sizes).T  # [anchors_per_location]
        cy, cx = centre_y[..., None], centre_x[..., None]
        boxes = np.stack([cy - half_h, cx - half_w, cy + half_h, cx + half_w], axis=-1)
        per_level.append(boxes.reshape(-1, 4))
    return np.concatenate(per_level).astype("float32")
