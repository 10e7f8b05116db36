# No official segmentation recipe (the official repository has no segmentation code or config): ours, Swin-style.
# UPerNet 160k ADE20K, SHViT-S4; strides 16/32/64 -> TransConvFPN (transposed convs make strides 8 and 4), BN frozen
# for det.
_base_ = [
    "./_base_/models/upernet.py",
    "./_base_/datasets/ade20k.py",
    "./_base_/schedules/schedule_160k.py",
    "./_base_/default_runtime.py",
]
model = dict(
    backbone=dict(
        _delete_=True,
        type="SHViTMM",
        model_name="shvit_s4",
        out_indices=(0, 1, 2),
        init_cfg=dict(type="Pretrained", checkpoint=None),
    ),
    neck=dict(
        type="TransConvFPN",
        in_channels=[224, 336, 448],
        out_channels=256,
        num_outs=4,
        num_extra_trans_convs=2,
        add_extra_convs=False,
        pre_norm=False,
    ),
    decode_head=dict(in_channels=[256, 256, 256, 256], num_classes=150),
    auxiliary_head=dict(in_channels=256, num_classes=150),
)
optim_wrapper = dict(optimizer=dict(lr=6e-05, weight_decay=0.01))
