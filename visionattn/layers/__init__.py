"""Attention modules shared by the backbones (official parameter names, so checkpoints load unchanged)."""
