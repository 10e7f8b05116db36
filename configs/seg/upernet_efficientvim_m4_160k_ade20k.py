# No official segmentation recipe (the official repository has no segmentation code or config): ours, Swin-style.
# UPerNet 160k ADE20K, EfficientViM-M4; TransConvFPN with pre_norm (det); Semantic FPN on the 3 maps + max-pool level
# (official).
_base_ = [
    "./_base_/models/upernet.py",
    "./_base_/datasets/ade20k.py",
    "./_base_/schedules/schedule_160k.py",
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
    neck=dict(
        type="TransConvFPN",
        in_channels=[224, 320, 512],
        out_channels=256,
        num_outs=4,
        num_extra_trans_convs=2,
        add_extra_convs=False,
        pre_norm=True,
    ),
    decode_head=dict(in_channels=[256, 256, 256, 256], num_classes=150),
    auxiliary_head=dict(in_channels=256, num_classes=150),
)
optim_wrapper = dict(optimizer=dict(lr=6e-05, weight_decay=0.01))
