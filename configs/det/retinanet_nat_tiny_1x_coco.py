# RetinaNet 1x, NAT-Tiny; the paper reports Mask R-CNN 3x and UPerNet 160k only (1x / RetinaNet / FPN are ours).
_base_ = [
    "./_base_/models/retinanet_fpn.py",
    "./_base_/datasets/coco_detection.py",
    "./_base_/schedules/schedule_1x.py",
    "./_base_/default_runtime.py",
]
model = dict(
    backbone=dict(
        _delete_=True,
        type="NATMM",
        model_name="nat_tiny",
        out_indices=(1, 2, 3),
        drop_path_rate=0.2,
        init_cfg=dict(type="Pretrained", checkpoint=None),
    ),
    neck=dict(in_channels=[128, 256, 512]),
)
optim_wrapper = dict(optimizer=dict(lr=0.0001, weight_decay=0.05))
