"""peftsum: compare parameter-efficient fine-tuning methods of GPT-2 for summarization."""

import logging

__version__ = "0.1.0"

# bitsandbytes (peftsum[qlora]), imported with PEFT, warns on every CPU with AVX512-BF16 that it could not fetch its
# 4-bit inference kernel from the hub; peftsum never uses that kernel (model.loading.keep_trainable_layout turns
# the repacking it serves off), so the warning says nothing to a peftsum user
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
