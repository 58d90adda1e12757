"""What users call: the CLI, reports, export and prediction."""
