"""The kernel layer: neighborhood attention and bi-level routing attention (reference, torch, triton)."""
