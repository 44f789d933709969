"""SpineNet backbone sizes: parameters against TF Model Garden, MACs at paper resolutions.

Usage: python benchmarks/backbone_table.py [--models 49S 49 ...] [--out BENCHMARKS.md]
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.reference import MODEL_GARDEN_BACKBONE_PARAMS as REFERENCE_PARAMS  # noqa: E402
from benchmarks.reference import PAPER_RESOLUTION  # noqa: E402
from benchmarks.report import BENCHMARKS_FILE, write_section  # noqa: E402
from spinenet_tf import MODEL_IDS, SCALING, SpineNet, profile  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODEL_IDS), choices=MODEL_IDS)
    parser.add_argument("--out", default=str(BENCHMARKS_FILE))
    args = parser.parse_args(argv)

    rows = [
        "| model | filter scale | alpha | repeats | endpoints | input | trainable params | Model Garden | "
        "difference | GMACs (backbone) | build s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model_id in args.models:
        start = time.perf_counter()
        model = SpineNet(model_id)
        built = time.perf_counter() - start
        size = PAPER_RESOLUTION[model_id]
        result = profile(model, (size, size, 3))
        scaling = SCALING[model_id]
        difference = result.trainable_params - REFERENCE_PARAMS[model_id]
        rows.append(
            f"| SpineNet-{model_id} | {scaling.filter_size_scale} | {scaling.resample_alpha} | "
            f"{scaling.block_repeats} | {scaling.endpoints_num_filters} | {size} | "
            f"{result.trainable_params:,} | {REFERENCE_PARAMS[model_id]:,} | {difference:+,} | "
            f"{result.gmacs:.2f} | {built:.1f} |"
        )
        print(rows[-1], flush=True)
    notes = (
        "Backbone only (stem, scale-permuted blocks, endpoint convs), outputs P3..P7. Parameters are "
        "trainable ones (BN moving statistics excluded), compared with TF Model Garden's SpineNet built "
        "with the same scaling. GMACs are multiply-adds of convolutions for one image at the paper's input "
        "size; the paper's FLOPs columns are for whole RetinaNet detectors, so they are not comparable "
        "to this column."
    )
    write_section(
        "backbone", "SpineNet backbones: parameters and MACs", "\n".join(rows) + "\n\n" + notes, args.out
    )
    print(f"wrote section 'backbone' of {args.out}")


if __name__ == "__main__":
    main()
