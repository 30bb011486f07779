"""Training: data preparation and batches, the trainer and its optimizers, evaluation, run records."""
