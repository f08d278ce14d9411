"""Where weights come from, one module per kind of source: GGUF files (`gguf`, with the
tokenizer they carry in `gguf_tokenizer`). Each turns its source into a Hugging Face
config.json-style dict for `attnscope.config.from_hf_config`, a tokenizer, and a stream of
(our name, tensor) pairs for `attnscope.model.build`; nothing here reaches further down
the chain than the family tables in `attnscope.architectures`.
"""
