# Semantic FPN 80k ADE20K, DiNAT-Tiny with the paper's dense dilation schedules (det: 28/14/7/3, seg: 16/8/4/2; spec
# nat.md s.6).
_base_ = [
    "./_base_/models/fpn.py",
    "./_base_/datasets/ade20k.py",
    "./_base_/schedules/schedule_80k.py",
    "./_base_/default_runtime.py",
]
model = dict(
    backbone=dict(
        _delete_=True,
        type="DiNATMM",
        model_name="dinat_tiny",
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.3,
        dilations=[[1, 16, 1], [1, 4, 1, 8], [1, 2, 1, 3, 1, 4] * 3, [1, 2, 1, 2, 1]],
        init_cfg=dict(type="Pretrained", checkpoint=None),
    ),
    neck=dict(in_channels=[64, 128, 256, 512]),
    decode_head=dict(num_classes=150),
)
optim_wrapper = dict(optimizer=dict(lr=0.0002, weight_decay=0.0001))
