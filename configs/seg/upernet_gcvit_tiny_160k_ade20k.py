# UPerNet 160k ADE20K, GC ViT-T (timm) built for img_size (windows img/32, /32, /16, /32); smaller inputs are padded
# up to it. The paper reports Mask R-CNN 3x only.
_base_ = [
    "./_base_/models/upernet.py",
    "./_base_/datasets/ade20k.py",
    "./_base_/schedules/schedule_160k.py",
    "./_base_/default_runtime.py",
]
model = dict(
    backbone=dict(
        _delete_=True,
        type="GCViTMM",
        model_name="gcvit_tiny",
        out_indices=(0, 1, 2, 3),
        img_size=512,
        drop_path_rate=0.2,
        init_cfg=dict(type="Pretrained", checkpoint=None),
    ),
    decode_head=dict(in_channels=[64, 128, 256, 512], num_classes=150),
    auxiliary_head=dict(in_channels=256, num_classes=150),
)
optim_wrapper = dict(optimizer=dict(lr=6e-05, weight_decay=0.01))
