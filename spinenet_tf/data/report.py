"""Counted warnings about bad data: a long job skips or fixes what it can and says so at the end."""

import collections
import logging

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
}


class DataReport:
    """Counts problems by kind, logs the first few of each, summarises all."""

    def __init__(self, source):
        self.source = source
        self.counts = collections.Counter()

    def warn(self, kind, detail):
        if kind not in ACTIONS:
            raise KeyError(f"Unknown data problem {kind!r}; known: {sorted(ACTIONS)}.")
        self.counts[kind] += 1
        if self.counts[kind] <= EXAMPLES_PER_KIND:
            LOGGER.warning("%s: %s (%s)", self.source, detail, ACTIONS[kind])

    def summary(self):
        if not self.counts:
            return f"{self.source}: no data problems found."
        lines = [f"{self.source}: {sum(self.counts.values())} data problem(s) handled:"]
        lines += [f"  {count:>7} x {ACTIONS[kind]}" for kind, count in sorted(self.counts.items())]
        return "\n".join(lines)
