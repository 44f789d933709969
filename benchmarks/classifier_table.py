"""ImageNet classifier sizes: parameters and MACs at 224 px against the tensorflow/tpu model zoo.

Usage: python -m benchmarks.classifier_table [--models 49 96 143 190] [--out BENCHMARKS.md]
"""

import argparse

from benchmarks.detector_table import _difference
from benchmarks.report import BENCHMARKS_FILE, write_section
from spinenet_tf import ImageClassifier, SpineNet, profile
from spinenet_tf.published import CLASSIFIER_REFERENCE

NOTES = """\
`ImageClassifier(SpineNet(model_id, image_shape=(224, 224, 3)), 1001)`: the head of the
tensorflow/tpu SpineNet classifiers (aggregation "all": P7 resized down level by level to P3
and added, divided by 5; global average pool; one dense layer of 1001 outputs). 224 is not a
multiple of 128: each level is ceil(224 / stride) (P6 4x4, P7 2x2) and the resamplings that
do not divide use a nearest resize, as the TPU code. The references are the zoo's table
(params in M and "FLOPs", multiply-adds, in B; rounded to 0.1). Ours count convolution and
dense multiply-adds only."""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="+", default=list(CLASSIFIER_REFERENCE), choices=list(CLASSIFIER_REFERENCE)
    )
    parser.add_argument("--out", default=str(BENCHMARKS_FILE))
    args = parser.parse_args(argv)
    rows = [
        "| model | input | trainable params | zoo | difference | GMACs | zoo GMACs | difference |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model_id in args.models:
        reference = CLASSIFIER_REFERENCE[model_id]
        size = reference["size"]
        result = profile(
            ImageClassifier(SpineNet(model_id, image_shape=(size, size, 3)), 1001), (size, size, 3)
        )
        params, gmacs = result.trainable_params, result.gmacs
        rows.append(
            f"| SpineNet-{model_id} | {size} | {params:,} | {reference['params'] / 1e6:.1f} M | "
            f"{_difference(params, reference['params'], exact=False)} | {gmacs:.2f} | "
            f"{reference['gmacs']} | {_difference(gmacs, reference['gmacs'], exact=False)} |"
        )
        print(rows[-1], flush=True)
    write_section(
        "classifier", "ImageNet classifiers: parameters and MACs", "\n".join(rows) + "\n\n" + NOTES, args.out
    )
    print(f"wrote section 'classifier' of {args.out}")


if __name__ == "__main__":
    main()
