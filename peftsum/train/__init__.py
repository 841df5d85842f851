"""Training: the summary-token loss every method shares, and the one training loop."""
