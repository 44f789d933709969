"""Image classification: the classifier task and its pyramid aggregation."""
