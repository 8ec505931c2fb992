"""The Wan2.1 causal streaming core shared by the diffusion pipelines."""
