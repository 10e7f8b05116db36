"""Train any visionattn (or timm) model on an ImageNet-layout folder from a YAML config.

    python tools/train.py --config configs/imagenet/nat_mini.yaml data_dir=/data/imagenet [key=value ...]

Every config key is listed with its default and meaning in `visionattn.train.KEYS`; `key=value` overrides are
parsed as YAML and dotted keys reach into mappings (`distill.type=hard`, `model_kwargs.embed_dim=32`; in a YAML
flow mapping put a space after each colon: `model_kwargs={embed_dim: 32}`). `batch_size` is per process;
`lr: null` means `lr_base * global_batch / lr_base_size`. `--print-recipe` prints the effective recipe for this
number of processes (as under torchrun) and batch beside the official run's, and exits.

Starting weights: `pretrained=true` (or a name such as dinat_large.in22k; `pretrained_path=FILE` for a local
copy) or `initial_checkpoint=FILE` (official or ours), read through the model family's checkpoint filter: the
classifier is re-initialised for another class count, anything else that does not fit stops the run (exit 2).
Fine-tune recipes (configs/imagenet, `finetune_from`) refuse to start without their starting weights.

Distributed (DDP; nccl on GPU, gloo on CPU): `torchrun --nproc_per_node=8 tools/train.py --config ...`; several
nodes: the same command on every node with `--nnodes=N --node_rank=I --rdzv_backend=c10d --rdzv_endpoint=HOST:PORT`.

A run directory is never overwritten: a fresh run needs an empty (or new) `output_dir`; `resume=auto` continues
the run there from its newest checkpoint; `overwrite=true` replaces the run there (only its own files).
`resume=<run or checkpoint dir>` continues another run's checkpoint into this `output_dir`. On resume, keys that
only steer the run (max_steps, intervals, workers, device...) may change (applied, recorded in run.json); other
changes are refused. A run killed at any moment resumes to the same result (`workers: 0`). One class mapping
per run (`class_map`, else the training folders), checked against val before the first step.

Outputs in output_dir: run.json, config.yaml, checkpoints/step-N/, best(_ema).safetensors, log.jsonl, tb/
(tensorboard: true), summary.json. Exit codes: 0 done, 2 bad arguments / config / data / model / checkpoint /
output_dir (one line on stderr), 3 non-finite loss (the last good checkpoint is kept).
"""
import sys

from visionattn.train import train_main

if __name__ == "__main__":
    sys.exit(train_main())
