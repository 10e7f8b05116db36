"""Test a segmentation (mmseg 1.x) model on mmengine's Runner; same flags as mmseg's tools/test.py.

Example: `python tools/seg_test.py configs/seg/upernet_biformer_s_160k_ade20k.py work_dirs/x/iter_160000.pth`;
multi-GPU: `torchrun --nproc_per_node=8 tools/seg_test.py CONFIG CKPT --launcher pytorch`.
"""
from visionattn.mm.runner import test_main

if __name__ == "__main__":
    test_main(scope="mmseg")
