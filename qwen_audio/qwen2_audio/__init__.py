"""Qwen2-Audio (``Qwen2AudioForConditionalGeneration`` checkpoints) on this library's encoder, decoder and recipes.

What differs from Qwen-Audio, each in one place:
- ``config.json`` layout, defaults and refused switches: :mod:`.hf_config`;
- tensor names and the fused q/k/v: :mod:`.weights`;
- companion files (tokenizer, preprocessor, stop ids): :mod:`.folder`;
- tokenizer (``tokenizer.json``), ``<audio>PATH</audio>`` expansion and the length rule: :mod:`.tokenizer`;
- 128 mel bins, no learned audio BOS/EOS, the encoder's 30 s window: ``AudioEncoderConfig`` fields set by the presets;
- task prompts, natural-language instructions instead of task tags: :mod:`.prompts`;
- chat audio labels (``Audio n: ``, numbered across the conversation): ``qwen_audio.prompts.AUDIO_LABELS``, picked
  by the tokenizer's ``family``.
"""
