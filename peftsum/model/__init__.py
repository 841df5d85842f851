"""Model: the GPT-2 tokenizer (offline copy of the original BPE), causal-LM loading, the demo base."""
