"""The benchmarks behind BENCHMARKS.md, one script per section: `python -m benchmarks.<name>`
from the repository root (`make bench` runs them all). Each writes its section, headed by
the command that produced it."""

import os

# Before any script imports TensorFlow: its C++ start-up logs would bury the tables.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
