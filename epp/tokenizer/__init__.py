"""Served models' own tokenizers, so the precise prefix view hashes the token ids engines cache.

* ``hf`` — a model folder's ``tokenizer.json`` (Hugging Face's Rust ``tokenizers``) and chat template
  (``jinja2``), applied the way vLLM applies them;
* ``resolve`` — a served model name → its tokenizer files, the way the engine finds them (a local
  folder, or a Hugging Face id in the offline cache);
* ``source`` — per model, the tokenizer to use, loaded once and off the pick path.
"""
