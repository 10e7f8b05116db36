"""Training and validation as a library: config, data, loop, run checkpoints (tools/train.py is a thin CLI)."""
