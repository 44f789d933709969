"""Draws detections on an image: a box, a label and a score per detection, a colour per class."""

import colorsys

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def class_colour(class_id):
    """A stable, well-separated colour for a class id (golden-ratio hues)."""
    hue = (class_id * 0.618033988749895) % 1.0
    return tuple(int(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.85, 0.95))


def draw_detections(image, detections, labels=None, min_score=0.0):
    """uint8 [H, W, 3] + {"boxes" [K, 4] ymin, xmin, ymax, xmax pixels, "scores", "classes"} -> PIL image."""
    picture = Image.fromarray(np.asarray(image, np.uint8)).convert("RGB")
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default()
    width = max(1, round(max(picture.size) / 300))
    order = np.argsort(detections["scores"])  # best drawn last, on top
    for index in order:
        score = float(detections["scores"][index])
        if score < min_score:
            continue
        class_id = int(detections["classes"][index])
        ymin, xmin, ymax, xmax = (float(v) for v in detections["boxes"][index])
        colour = class_colour(class_id)
        draw.rectangle([xmin, ymin, xmax, ymax], outline=colour, width=width)
        text = f"{(labels or {}).get(class_id, class_id)} {score:.2f}"
        left, top, right, bottom = draw.textbbox((xmin, ymin), text, font=font)
        top_y = ymin - (bottom - top) - 2 if ymin >= bottom - top + 2 else ymin
        draw.rectangle([xmin, top_y, xmin + right - left + 4, top_y + bottom - top + 2], fill=colour)
        draw.text((xmin + 2, top_y), text, fill=(0, 0, 0), font=font)
    return picture
