"""Train a segmentation (mmseg 1.x) model on mmengine's Runner; same flags as mmseg's tools/train.py.

Example: `python tools/seg_train.py configs/seg/upernet_biformer_s_160k_ade20k.py`;
multi-GPU: `torchrun --nproc_per_node=8 tools/seg_train.py CONFIG --launcher pytorch`.
"""
from visionattn.mm.runner import train_main

if __name__ == "__main__":
    train_main(scope="mmseg")
