"""Where spinenet_tf keeps what it writes once and reuses: generated datasets, converted presets."""

import os


def cache_dir(*parts):
    """$XDG_CACHE_HOME (or ~/.cache) / spinenet_tf / parts: not the working directory, so that
    runs from any folder share one copy."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "spinenet_tf", *parts)
