"""A run: its configuration, the trainer, the run folder (journal, answers, checkpoints,
the saved program, the plot)."""
