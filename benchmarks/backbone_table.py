"""SpineNet backbone sizes: parameters against TF Model Garden, MACs at paper resolutions.

Usage: python -m benchmarks.backbone_table [--models 49S 49 ...] [--out BENCHMARKS.md]
"""

import argparse
import functools

from benchmarks.report import BENCHMARKS_FILE, write_section
from benchmarks.timing import timed
from spinenet_tf import MODEL_IDS, SCALING, SpineNet, profile
from spinenet_tf.published import MODEL_GARDEN_BACKBONE_PARAMS as REFERENCE_PARAMS
from spinenet_tf.published import PAPER_RESOLUTION


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
        model, built = timed(functools.partial(SpineNet, model_id))
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
