"""Training, inference, evaluation and checkpoint I/O."""
