# No official segmentation recipe (the official repository has no segmentation code or config): ours, Swin-style.
# Semantic FPN 80k ADE20K, EfficientViM-M4; TransConvFPN with pre_norm (det); Semantic FPN on the 3 maps + max-pool
# level (official).
_base_ = [
    "./_base_/models/fpn.py",
    "./_base_/datasets/ade20k.py",
    "./_base_/schedules/schedule_80k.py",
    "./_base_/default_runtime.py",
]
model = dict(
    backbone=dict(
        _delete_=True,
        type="EfficientViMMM",
        model_name="efficientvim_m4",
        out_indices=(0, 1, 2),
        init_cfg=dict(type="Pretrained", checkpoint=None),
    ),
    neck=dict(in_channels=[224, 320, 512], out_channels=256, num_outs=4),
    decode_head=dict(num_classes=150),
)
optim_wrapper = dict(optimizer=dict(lr=0.0002, weight_decay=0.0001))
