"""Qwen2-Audio on this library's encoder, decoder and recipes.

It loads ``Qwen2AudioForConditionalGeneration`` checkpoints.

Each difference from Qwen-Audio lives in one place:
    ``config.json`` layout, defaults and refused switches: :mod:`.hf_config`.
    Tensor names and the fused q/k/v: :mod:`.weights`.
    Companion files (tokenizer, preprocessor, stop ids): :mod:`.folder`.
    Tokenizer (``tokenizer.json``), ``<audio>PATH</audio>`` expansion and the length rule:
    :mod:`.tokenizer`.
    The 128 mel bins, no learned audio BOS/EOS, the encoder's 30 s window: ``AudioEncoderConfig``
    fields set by the presets.
    Task prompts, natural-language instructions instead of task tags: :mod:`.prompts`.
    Chat audio labels (``Audio n: ``, numbered across the conversation):
    ``qwen_audio.prompts.AUDIO_LABELS``. The tokenizer's ``family`` picks them.
"""
