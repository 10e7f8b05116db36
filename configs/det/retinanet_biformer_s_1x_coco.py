# RetinaNet 1x, BiFormer-S, official det/seg settings (n_win 16 det / 8 seg, auto_pad, extra_norms; spec biformer.md
# s.6).
_base_ = [
    "./_base_/models/retinanet_fpn.py",
    "./_base_/datasets/coco_detection.py",
    "./_base_/schedules/schedule_1x.py",
    "./_base_/default_runtime.py",
]
model = dict(
    backbone=dict(
        _delete_=True,
        type="BiFormerMM",
        model_name="biformer_s",
        out_indices=(1, 2, 3),
        n_win=16,
        drop_path_rate=0.2,
        norm_eval=True,
        init_cfg=dict(type="Pretrained", checkpoint=None),
    ),
    neck=dict(in_channels=[128, 256, 512]),
)
optim_wrapper = dict(optimizer=dict(lr=0.0001, weight_decay=0.0001))
