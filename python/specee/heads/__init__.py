"""SpecEE heads (draft head, exit predictors, schedule): :mod:`.head_file`
reads and writes their GGUF file, :mod:`.shipped` finds the trained heads
that ship in this folder for known models."""
