"""Checks on image files before training reads them: readable, complete, of a format TensorFlow decodes.

Readers of COCO folders and of class folders probe each file's header and last bytes
(fast: no decoding), so a damaged image is counted in their `DataReport` and skipped up
front instead of failing, or silently training on grey pixels, later.
"""

import os

from PIL import Image

# PIL format name -> tf.io.decode_image's name for it; other formats are re-encoded (see tfrecord.py).
DECODABLE_FORMATS = {"JPEG": b"jpeg", "PNG": b"png", "BMP": b"bmp", "GIF": b"gif"}
# The bytes a complete file ends with, by PIL format name (MPO: a phone's multi-picture JPEG).
JPEG_END = b"\xff\xd9"
END_MARKERS = {"JPEG": JPEG_END, "MPO": JPEG_END, "PNG": b"\0\0\0\0IEND\xaeB`\x82"}
TAIL_BYTES = 4096


def _jpeg_scan_start(data):
    """Offset of a JPEG's first start-of-scan marker, found by walking its header segments.

    Searching the bytes instead could stop inside an APP segment, whose embedded
    thumbnail (EXIF) is a whole JPEG with an end marker of its own.
    """
    position = 2  # after the start-of-image marker
    while position + 4 <= len(data) and data[position] == 0xFF:
        marker = data[position + 1]
        if marker == 0xDA:
            return position
        if marker == 0xFF:  # fill byte before a marker
            position += 1
        else:
            position += 2 + int.from_bytes(data[position + 2 : position + 4], "big")
    return position


def is_truncated(file, image_format):
    """Whether an open JPEG or PNG file stops before its end marker (other formats: False).

    A cut JPEG can decode "successfully" in TensorFlow, grey below the cut, with one
    anonymous log line, so the readers check the end of each file: the last TAIL_BYTES
    (zero padding allowed after the marker); only when they do not end with the marker is
    the whole file searched, for data appended after it (phones append videos to photos).
    """
    end = END_MARKERS.get(image_format)
    if end is None:
        return False
    size = file.seek(0, os.SEEK_END)
    file.seek(max(0, size - TAIL_BYTES))
    if file.read().rstrip(b"\0").endswith(end):
        return False
    file.seek(0)
    data = file.read()
    start = _jpeg_scan_start(data) if end == JPEG_END else 0
    return data.find(end, start) < 0


def probe_image(path, name, report):
    """(height, width, PIL format name) from the file's header, or None when it is empty, not a
    readable image or cut short; problems are counted in `report` under `name`."""
    try:
        with open(path, "rb") as file:
            if file.seek(0, os.SEEK_END) == 0:
                report.warn("corrupt_image", f"{name}: the file is empty")
                return None
            file.seek(0)
            with Image.open(file) as opened:
                width, height = opened.size
                image_format = opened.format
            truncated = is_truncated(file, image_format)
    except (OSError, SyntaxError, ValueError) as error:
        report.warn("corrupt_image", f"{name}: {error}")
        return None
    if truncated:
        report.warn("truncated_image", f"{name}: {image_format} data ends before its end marker")
        return None
    return height, width, image_format
