# RetinaNet 1x, DiNAT-Tiny with the paper's dense dilation schedules (det: 28/14/7/3, seg: 16/8/4/2; spec nat.md s.6).
_base_ = [
    "./_base_/models/retinanet_fpn.py",
    "./_base_/datasets/coco_detection.py",
    "./_base_/schedules/schedule_1x.py",
    "./_base_/default_runtime.py",
]
model = dict(
    backbone=dict(
        _delete_=True,
        type="DiNATMM",
        model_name="dinat_tiny",
        out_indices=(1, 2, 3),
        drop_path_rate=0.2,
        dilations=[[1, 28, 1], [1, 7, 1, 14], [1, 3, 1, 5, 1, 7] * 3, [1, 3, 1, 3, 1]],
        init_cfg=dict(type="Pretrained", checkpoint=None),
    ),
    neck=dict(in_channels=[128, 256, 512]),
)
optim_wrapper = dict(optimizer=dict(lr=0.0001, weight_decay=0.05))
