"""Counted warnings about bad data: a long job skips or fixes what it can and says so at the end."""

import collections
import logging
import threading

LOGGER = logging.getLogger("spinenet_tf.data")
# Warnings printed per kind of problem; the rest are only counted.
EXAMPLES_PER_KIND = 3

# What the readers do about each problem, for the summary.
ACTIONS = {
    "unsafe_path": "image skipped: file_name leaves the images directory",
    "missing_file": "image skipped: file not found",
    "corrupt_image": "image skipped: not a readable image",
    "truncated_image": "image skipped: file cut short (no JPEG/PNG end marker)",
    "size_mismatch": "size fixed: JSON height/width differ from the file's",
    "no_annotations": "image kept as background only: no annotations",
    "malformed_annotation": "annotation skipped: bbox is not 4 numbers",
    "unknown_image": "annotation skipped: image_id not in 'images'",
    "unknown_category": "annotation skipped: category_id not in 'categories'",
    "degenerate_box": "annotation skipped: box with zero or negative width/height",
    "box_outside_image": "annotation skipped: box entirely outside the image",
    "clipped_box": "box clipped to the image",
    "duplicate_image_id": "image skipped: id used by an earlier image",
    "missing_mask": "box-filled mask used: object has no usable segmentation",
    "mismatched_mask": "box-filled mask used: mask size or count differs from the image's objects",
    "empty_mask": "box-filled mask used: instance mask has no pixels",
    "not_an_image": "file skipped: not named .jpg, .jpeg, .png, .bmp or .gif",
    "unsupported_format": "image skipped: not JPEG, PNG, BMP or GIF, the formats TensorFlow decodes",
    "empty_class": "class kept without images: its label stays reserved, never trained",
    "malformed_record": "record skipped: not a tf.Example with image/encoded and image/class/label",
    "undecodable_image": "image skipped: failed to decode (counted each time it is read)",
}


class DataReport:
    """Counts problems by kind, logs the first few of each, summarises all.

    Thread-safe: the input pipeline warns from its parallel workers (mask problems of
    TFRecords are only seen there, once per read of the example).
    """

    def __init__(self, source):
        self.source = source
        self.counts = collections.Counter()
        self._lock = threading.Lock()

    def warn(self, kind, detail):
        if kind not in ACTIONS:
            raise KeyError(f"Unknown data problem {kind!r}; known: {sorted(ACTIONS)}.")
        with self._lock:
            self.counts[kind] += 1
            count = self.counts[kind]
        if count <= EXAMPLES_PER_KIND:
            LOGGER.warning("%s: %s (%s)", self.source, detail, ACTIONS[kind])

    def summary(self):
        with self._lock:
            counts = dict(self.counts)
        if not counts:
            return f"{self.source}: no data problems found."
        lines = [f"{self.source}: {sum(counts.values())} data problem(s) handled:"]
        lines += [f"  {count:>7} x {ACTIONS[kind]}" for kind, count in sorted(counts.items())]
        return "\n".join(lines)
