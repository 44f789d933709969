"""Draws detections on an image: a box, a label and a score per detection, a colour per class.

A Mask R-CNN's detections also get their masks, filled translucent under their boxes, so
the object stays visible through its colour.
"""

import colorsys

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from spinenet_tf.masks import paste_masks

# Space between the two panels of `draw_ground_truth_and_detections`, and its caption band.
PANEL_GAP = 4
CAPTION_HEIGHT = 14
MASK_OPACITY = 0.45  # of the class colour over a mask's pixels


def class_colour(class_id):
    """A stable, well-separated colour for a class id (golden-ratio hues)."""
    hue = (class_id * 0.618033988749895) % 1.0
    return tuple(int(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.85, 0.95))


def draw_detections(image, detections, labels=None, min_score=0.0):
    """uint8 [H, W, 3] + {"boxes" [K, 4] ymin, xmin, ymax, xmax pixels, "scores", "classes"} -> PIL image.

    Without "scores" (ground truth) every box is drawn, labelled by its class alone. With
    "masks" [K, M, M] (probabilities in each box's frame, see `spinenet_tf.masks`) each drawn
    detection's mask is filled in its class colour, MASK_OPACITY opaque, before any box.
    """
    picture = Image.fromarray(np.asarray(image, np.uint8)).convert("RGB")
    scores = detections.get("scores")
    order = np.argsort(scores) if scores is not None else range(len(detections["classes"]))  # best on top
    order = [index for index in order if scores is None or float(scores[index]) >= min_score]
    if "masks" in detections:
        picture = _fill_masks(picture, detections, order)
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default()
    width = max(1, round(max(picture.size) / 300))
    for index in order:
        class_id = int(detections["classes"][index])
        ymin, xmin, ymax, xmax = (float(v) for v in detections["boxes"][index])
        colour = class_colour(class_id)
        draw.rectangle([xmin, ymin, xmax, ymax], outline=colour, width=width)
        text = str((labels or {}).get(class_id, class_id))
        if scores is not None:
            text += f" {float(scores[index]):.2f}"
        left, top, right, bottom = draw.textbbox((xmin, ymin), text, font=font)
        top_y = ymin - (bottom - top) - 2 if ymin >= bottom - top + 2 else ymin
        draw.rectangle([xmin, top_y, xmin + right - left + 4, top_y + bottom - top + 2], fill=colour)
        draw.text((xmin + 2, top_y), text, fill=(0, 0, 0), font=font)
    return picture


def _fill_masks(picture, detections, order):
    """The picture with the masks of `order` blended in, one pasted at a time (a photo may be large)."""
    pixels = np.array(picture, np.float32)
    masks, boxes = np.asarray(detections["masks"]), np.asarray(detections["boxes"])
    for index in order:
        inside = paste_masks(masks[index : index + 1], boxes[index : index + 1], *pixels.shape[:2])[0] > 0
        colour = np.asarray(class_colour(int(detections["classes"][index])), np.float32)
        pixels[inside] = (1 - MASK_OPACITY) * pixels[inside] + MASK_OPACITY * colour
    return Image.fromarray(np.round(pixels).astype(np.uint8))


def draw_ground_truth_and_detections(image, ground_truth, detections, labels=None, min_score=0.0):
    """One picture: the image with its ground-truth boxes (left) and with the detections (right).

    What TF Object Detection API users look at in TensorBoard after each evaluation.
    """
    panels = [
        draw_detections(image, ground_truth, labels),
        draw_detections(image, detections, labels, min_score),
    ]
    width, height = panels[0].size
    picture = Image.new("RGB", (2 * width + PANEL_GAP, height + CAPTION_HEIGHT), (255, 255, 255))
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default()
    for column, (panel, caption) in enumerate(
        zip(panels, ["ground truth", f"detections (score >= {min_score})"])
    ):
        left = column * (width + PANEL_GAP)
        draw.text((left + 2, 1), caption, fill=(0, 0, 0), font=font)
        picture.paste(panel, (left, CAPTION_HEIGHT))
    return picture
