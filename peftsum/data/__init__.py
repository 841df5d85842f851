"""Data: raw sources -> cleaned, leak-free subsets -> tokenized examples -> padded batches."""
