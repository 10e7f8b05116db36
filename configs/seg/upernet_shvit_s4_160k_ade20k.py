# No official UPerNet recipe: no segmentation code or config in ysj9909/SHViT (its README reports COCO detection
# only). Ours, Swin-style (UPerNet 160k ADE20K, AdamW 6e-5 / 0.01). SHViT-S4: strides 16/32/64 -> the official
# detection neck EfficientViTFPN with one transposed conv (strides 8..64, every level used by the heads); BN always in
# eval in the backbone, as the official dense backbone.
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
        type="EfficientViTFPN",
        in_channels=[224, 336, 448],
        out_channels=256,
        num_outs=4,
        start_level=0,
        num_extra_trans_convs=1,
    ),
    decode_head=dict(in_channels=[256, 256, 256, 256], num_classes=150),
    auxiliary_head=dict(in_channels=256, num_classes=150),
)
optim_wrapper = dict(optimizer=dict(lr=6e-05, weight_decay=0.01))
