"""Build the demo BPE as a Qwen2-style ``tokenizer.json``.

It is written to ``qwen_audio/assets/qwen2_demo_tokenizer.json``. The 4096 ranks of
``demo.tiktoken`` become byte-level BPE merges. The conversion is transformers'
``TikTokenConverter``, the converter of Qwen2's own tokenizer. The result has Qwen2's NFC normaliser
and the family's six special tokens, at ids 4096 ... 4101 in the release's order.

Run: ``python scripts/build_qwen2_demo_tokenizer.py``.
"""

from tokenizers import normalizers
from transformers.convert_slow_tokenizer import TikTokenConverter

from qwen_audio.qwen2_audio.tokenizer import DEMO_TOKENIZER_FILE, SPECIAL_TOKENS
from qwen_audio.tokenizer import DEMO_RANKS_FILE, PAT_STR

tokenizer = TikTokenConverter(
    vocab_file=str(DEMO_RANKS_FILE), pattern=PAT_STR, extra_special_tokens=list(SPECIAL_TOKENS)
).converted()
tokenizer.normalizer = normalizers.NFC()
tokenizer.save(str(DEMO_TOKENIZER_FILE))
print(f"wrote {DEMO_TOKENIZER_FILE}: {tokenizer.get_vocab_size()} ids")
