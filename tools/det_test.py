"""Test a detection (mmdet 3.x) model on mmengine's Runner; same flags as mmdet's tools/test.py.

Example: `python tools/det_test.py configs/det/mask_rcnn_biformer_s_1x_coco.py work_dirs/x/epoch_12.pth`;
multi-GPU: `torchrun --nproc_per_node=8 tools/det_test.py CONFIG CKPT --launcher pytorch`.
"""
from visionattn.mm.runner import test_main

if __name__ == "__main__":
    test_main(scope="mmdet")
