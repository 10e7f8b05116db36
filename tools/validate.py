"""Evaluate a model on an ImageNet-layout split: top-1 / top-5 / loss as one JSON line.

    python tools/validate.py --config configs/imagenet/nat_mini.yaml --checkpoint output/nat_mini \
        data_dir=/data/imagenet
    python tools/validate.py --model nat_mini --checkpoint w.safetensors data_dir=/data/imagenet img_size=224

--checkpoint takes a safetensors file, a weights-only torch file, a checkpoint directory or a training run
directory (its best, else its newest checkpoint's weights; `--ema` prefers the EMA copy). Labels follow the
run's class list (run.json) when the checkpoint belongs to a run, else `class_map`, else the split's folders.
`key=value` overrides use the training config keys (data_dir, val_split, img_size, batch_size, workers, amp,
channels_last, model_kwargs...). Runs under torchrun too (the split is sharded, counts are all-reduced).
Exit code 2 (one line on stderr) on bad arguments, config, data folder, model or checkpoint.
"""
import sys

from visionattn.train import validate_main

if __name__ == "__main__":
    sys.exit(validate_main())
