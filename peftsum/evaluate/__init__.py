"""Evaluation, one path for every method: summary-token loss, generation, ROUGE, cost metrics."""
