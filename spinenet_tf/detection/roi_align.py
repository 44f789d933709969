"""Multilevel RoIAlign (He et al. 2017) in keras.ops: fixed-size features of boxes on a pyramid.

Each box reads the level that suits its size, floor(4 + log2(sqrt(area) / 224)) clipped
to the pyramid (Lin et al. 2017: a 224 px box on level 4). Its output_size x
output_size bins each take one bilinear sample at the bin's centre, the sampling of TF
Model Garden and tensorflow/tpu (`multilevel_crop_and_resize`, sample offset 0.5), whose
convention this follows so that their trained heads read the same values: on a level of
stride s, box coordinate y / s addresses feature row floor(y / s) directly. Samples
beyond the last row or column take its value.

All levels are flattened into one [B * sum(H_l * W_l), C] table and every sample is a
gather from it: the same graph for any number of boxes, on every backend, and in
SavedModel and TFLite (GATHER) alike.
"""

from keras import ops

CANONICAL_LEVEL = 4
CANONICAL_SIZE = 224.0


def roi_levels(boxes, min_level, max_level):
    """Pyramid level of each box [..., 4]: int32 [...] in min_level..max_level."""
    height = ops.maximum(boxes[..., 2] - boxes[..., 0], 0.0)
    width = ops.maximum(boxes[..., 3] - boxes[..., 1], 0.0)
    size = ops.sqrt(height * width)
    level = ops.floor(CANONICAL_LEVEL + ops.log2(ops.maximum(size, 1e-6) / CANONICAL_SIZE))
    return ops.cast(ops.clip(level, min_level, max_level), "int32")


def bilinear_samples(table, start, height, width, grid_y, grid_x, zero_outside=False):
    """Bilinear samples of 2-D maps stored row-major in one table.

    Args:
        table: [T, C]; map k occupies rows start[k] .. start[k] + height[k] * width[k].
        start, height, width: int32 [...] per map to sample (any leading shape).
        grid_y: float [..., S] row coordinates (row r's value sits at r); grid_x [..., S'].
        zero_outside: samples more than half a cell outside the map are 0 (a mask beyond
            its crop); otherwise they take the nearest edge value.

    Returns [..., S, S', C].
    """
    height_f = ops.cast(ops.expand_dims(height, -1), "float32")
    width_f = ops.cast(ops.expand_dims(width, -1), "float32")
    y = ops.clip(grid_y, 0.0, height_f - 1.0)
    x = ops.clip(grid_x, 0.0, width_f - 1.0)
    y0, x0 = ops.floor(y), ops.floor(x)
    y1, x1 = ops.minimum(y0 + 1.0, height_f - 1.0), ops.minimum(x0 + 1.0, width_f - 1.0)
    ly, lx = y - y0, x - x0
    weight_y = [1.0 - ly, ly]
    weight_x = [1.0 - lx, lx]
    if zero_outside:
        inside_y = ops.cast((grid_y >= -0.5) & (grid_y <= height_f - 0.5), "float32")
        inside_x = ops.cast((grid_x >= -0.5) & (grid_x <= width_f - 0.5), "float32")
        weight_y = [w * inside_y for w in weight_y]
        weight_x = [w * inside_x for w in weight_x]
    base = ops.expand_dims(ops.expand_dims(start, -1), -1)  # [..., 1, 1]
    row_width = ops.expand_dims(ops.expand_dims(width, -1), -1)
    result = 0.0
    for rows, w_y in zip((y0, y1), weight_y):
        for columns, w_x in zip((x0, x1), weight_x):
            index = (
                base
                + ops.cast(ops.expand_dims(rows, -1), "int32") * row_width
                + ops.cast(ops.expand_dims(columns, -2), "int32")
            )
            values = ops.take(table, ops.reshape(index, (-1,)), axis=0)
            values = ops.reshape(values, (*ops.shape(index), table.shape[-1]))
            weight = ops.expand_dims(ops.expand_dims(w_y, -1) * ops.expand_dims(w_x, -2), -1)
            result = result + values * ops.cast(weight, values.dtype)
    return result


def bin_centres(start, length, output_size, sample_offset=0.5):
    """[..., output_size] coordinates of the bin centres of segments [start, start + length)."""
    steps = (ops.arange(output_size, dtype="float32") + sample_offset) / output_size
    return ops.expand_dims(start, -1) + ops.expand_dims(length, -1) * steps


def multilevel_roi_align(features, boxes, output_size, min_level):
    """RoIAlign features of boxes.

    Args:
        features: list of [B, H_l, W_l, C] maps, levels min_level, min_level + 1, ...
        boxes: [B, R, 4] ymin, xmin, ymax, xmax in input pixels.
        output_size: bins per side (7 for box heads, 14 for mask heads).

    Returns [B, R, output_size, output_size, C].
    """
    max_level = min_level + len(features) - 1
    batch = ops.shape(boxes)[0]
    channels = features[0].shape[-1]
    heights = [int(f.shape[1]) for f in features]
    widths = [int(f.shape[2]) for f in features]
    sizes = [h * w for h, w in zip(heights, widths)]
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    per_image = sum(sizes)
    table = ops.reshape(
        ops.concatenate([ops.reshape(f, (batch, -1, channels)) for f in features], axis=1), (-1, channels)
    )

    boxes = ops.cast(boxes, "float32")
    level = roi_levels(boxes, min_level, max_level) - min_level  # [B, R]
    stride = ops.power(2.0, ops.cast(level + min_level, "float32"))
    image_start = ops.expand_dims(ops.arange(batch, dtype="int32") * per_image, -1)
    start = image_start + ops.take(ops.convert_to_tensor(offsets, "int32"), level)
    height = ops.take(ops.convert_to_tensor(heights, "int32"), level)
    width = ops.take(ops.convert_to_tensor(widths, "int32"), level)
    grid_y = bin_centres(boxes[..., 0] / stride, (boxes[..., 2] - boxes[..., 0]) / stride, output_size)
    grid_x = bin_centres(boxes[..., 1] / stride, (boxes[..., 3] - boxes[..., 1]) / stride, output_size)
    return bilinear_samples(table, start, height, width, grid_y, grid_x)


def crop_mask_targets(gt_masks, gt_boxes, rois, matched, output_size):
    """Mask targets of RoIs: each RoI's window of its ground-truth mask, output_size x output_size.

    Args:
        gt_masks: [B, M, S, S] masks cropped to their boxes (the input pipeline's
            `mask_crop_size` labels: cell i samples its box at (i + 0.5) / S).
        gt_boxes: [B, M, 4]; rois: [B, R, 4] (input pixels); matched: int [B, R] ground
            truth of each RoI.

    Returns [B, R, output_size, output_size] float in [0, 1]; zero where the RoI reaches
    past its ground-truth box.
    """
    batch, num_gt = ops.shape(gt_masks)[0], ops.shape(gt_masks)[1]
    crop = gt_masks.shape[-1]
    table = ops.reshape(ops.cast(gt_masks, "float32"), (-1, 1))
    matched = ops.cast(matched, "int32")
    box = ops.take_along_axis(ops.cast(gt_boxes, "float32"), ops.expand_dims(matched, -1), axis=1)
    start = (ops.expand_dims(ops.arange(batch, dtype="int32"), -1) * num_gt + matched) * crop * crop
    size = ops.full(ops.shape(matched), crop, "int32")
    rois = ops.cast(rois, "float32")
    scale_y = crop / ops.maximum(box[..., 2] - box[..., 0], 1e-6)
    scale_x = crop / ops.maximum(box[..., 3] - box[..., 1], 1e-6)
    # RoI bin centres in the crop's cells, whose values sit at their centres (index + 0.5).
    grid_y = bin_centres(
        (rois[..., 0] - box[..., 0]) * scale_y, (rois[..., 2] - rois[..., 0]) * scale_y, output_size
    )
    grid_x = bin_centres(
        (rois[..., 1] - box[..., 1]) * scale_x, (rois[..., 3] - rois[..., 1]) * scale_x, output_size
    )
    samples = bilinear_samples(table, start, size, size, grid_y - 0.5, grid_x - 0.5, zero_outside=True)
    return samples[..., 0]
