# No official UPerNet recipe: mlvlab/EfficientViM's only segmentation recipe is Semantic FPN 40k
# (fpn_efficientvim_m4_40k_ade20k.py). Ours, Swin-style (UPerNet 160k ADE20K, AdamW 6e-5 / 0.01). EfficientViM-M4:
# strides 16/32/64 -> the official detection neck EfficientViTFPN with one transposed conv (strides 8..64, every level
# used by the heads); BN always in eval in the backbone, as the official dense backbone.
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
        type="EfficientViTFPN",
        in_channels=[224, 320, 512],
        out_channels=256,
        num_outs=4,
        start_level=0,
        num_extra_trans_convs=1,
        pre_norm=True,
    ),
    decode_head=dict(in_channels=[256, 256, 256, 256], num_classes=150),
    auxiliary_head=dict(in_channels=256, num_classes=150),
)
optim_wrapper = dict(optimizer=dict(lr=6e-05, weight_decay=0.01))
