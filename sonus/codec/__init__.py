"""Speech tokenizer: a neural codec with residual vector quantization."""
