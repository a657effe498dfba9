"""specee: speculative early exit (SpecEE) inference for Llama-family GGUF models on ggml."""
