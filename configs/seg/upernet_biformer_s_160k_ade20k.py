# UPerNet 160k ADE20K, BiFormer-S, official det/seg settings (n_win 16 det / 8 seg, auto_pad, extra_norms; spec
# biformer.md s.6).
_base_ = [
    "./_base_/models/upernet.py",
    "./_base_/datasets/ade20k.py",
    "./_base_/schedules/schedule_160k.py",
    "./_base_/default_runtime.py",
]
model = dict(
    backbone=dict(
        _delete_=True,
        type="BiFormerMM",
        model_name="biformer_s",
        out_indices=(0, 1, 2, 3),
        n_win=8,
        drop_path_rate=0.3,
        init_cfg=dict(type="Pretrained", checkpoint=None),
    ),
    decode_head=dict(in_channels=[64, 128, 256, 512], num_classes=150),
    auxiliary_head=dict(in_channels=256, num_classes=150),
)
optim_wrapper = dict(optimizer=dict(lr=6e-05, weight_decay=0.01))
