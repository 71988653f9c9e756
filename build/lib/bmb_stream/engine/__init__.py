"""The learner (everything that survives between batches), the training loops and checkpoints."""
