# UPerNet 160k ADE20K, DiNAT-Tiny with the paper's dense dilation schedules (det: 28/14/7/3, seg: 16/8/4/2; spec
# nat.md s.6).
_base_ = [
    "./_base_/models/upernet.py",
    "./_base_/datasets/ade20k.py",
    "./_base_/schedules/schedule_160k.py",
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
    decode_head=dict(in_channels=[64, 128, 256, 512], num_classes=150),
    auxiliary_head=dict(in_channels=256, num_classes=150),
)
optim_wrapper = dict(optimizer=dict(lr=6e-05, weight_decay=0.01))
