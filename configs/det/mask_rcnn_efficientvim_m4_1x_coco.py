# Mask R-CNN 1x, EfficientViM-M4; TransConvFPN with pre_norm (det); Semantic FPN on the 3 maps + max-pool level
# (official).
_base_ = [
    "./_base_/models/mask_rcnn_fpn.py",
    "./_base_/datasets/coco_instance.py",
    "./_base_/schedules/schedule_1x.py",
    "./_base_/default_runtime.py",
]
model = dict(
    backbone=dict(
        _delete_=True,
        type="EfficientViMMM",
        model_name="efficientvim_m4",
        out_indices=(0, 1, 2),
        norm_eval=True,
        init_cfg=dict(type="Pretrained", checkpoint=None),
    ),
    neck=dict(
        _delete_=True,
        type="TransConvFPN",
        in_channels=[224, 320, 512],
        out_channels=256,
        num_outs=5,
        num_extra_trans_convs=2,
        pre_norm=True,
    ),
)
optim_wrapper = dict(optimizer=dict(lr=0.0002, weight_decay=0.05))
