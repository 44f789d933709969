"""Tiny COCO-format datasets written on the fly: coloured rectangles with exact boxes and masks."""

import json

import numpy as np
from PIL import Image

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]


def rectangle_image(height, width, boxes):
    """Grey image with box k filled in COLOURS[k]; boxes are COCO [x, y, w, h] integers."""
    image = np.full((height, width, 3), 40, np.uint8)
    for k, (x, y, w, h) in enumerate(boxes):
        image[y : y + h, x : x + w] = COLOURS[k % len(COLOURS)]
    return image


def write_coco(root, images, categories=(1, 2, 3), extra_annotations=(), image_format="PNG"):
    """images: list of (file_name, height, width, [(category_id, [x, y, w, h], iscrowd), ...]).

    Writes the images (rectangles painted as in `rectangle_image`) under root/images and
    the JSON to root/instances.json; returns (images_dir, annotations_file).
    """
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    data = {
        "images": [],
        "annotations": list(extra_annotations),
        "categories": [{"id": c, "name": f"c{c}"} for c in categories],
    }
    for image_id, (file_name, height, width, objects) in enumerate(images, start=1):
        boxes = [bbox for _, bbox, _ in objects]
        Image.fromarray(rectangle_image(height, width, boxes)).save(
            images_dir / file_name, format=image_format
        )
        data["images"].append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for category, (x, y, w, h), crowd in objects:
            polygon = [x, y, x + w, y, x + w, y + h, x, y + h]
            entry = annotation(len(data["annotations"]) + 1, image_id, category, [x, y, w, h], crowd)
            data["annotations"].append({**entry, "segmentation": [polygon]})
    annotations_file = root / "instances.json"
    annotations_file.write_text(json.dumps(data))
    return images_dir, annotations_file


def annotation(annotation_id, image_id, category, bbox, crowd=0):
    """A COCO annotation entry for an [x, y, w, h] box."""
    x, y, w, h = bbox
    return {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": category,
        "bbox": [x, y, w, h],
        "area": w * h,
        "iscrowd": crowd,
    }
