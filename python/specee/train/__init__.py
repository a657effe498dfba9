"""Training of SpecEE heads for any supported GGUF: features from the target
(libspecee itself, so training sees inference numerics), the EAGLE-style
draft head (torch, CPU), the exit predictors, and packing into a head file.
Needs the optional extra: pip install "specee[train]"."""
