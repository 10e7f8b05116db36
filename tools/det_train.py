"""Train a detection (mmdet 3.x) model on mmengine's Runner; same flags as mmdet's tools/train.py.

Example: `python tools/det_train.py configs/det/mask_rcnn_biformer_s_1x_coco.py`;
multi-GPU: `torchrun --nproc_per_node=8 tools/det_train.py CONFIG --launcher pytorch`.
"""
from visionattn.mm.runner import train_main

if __name__ == "__main__":
    train_main(scope="mmdet")
