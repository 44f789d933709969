"""Detection data: readers, TFRecords, augmentation, synthetic data, input pipelines."""
