"""peftsum: compare parameter-efficient fine-tuning methods of GPT-2 for summarization."""

__version__ = "0.1.0"
