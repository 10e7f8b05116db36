# Mask R-CNN 1x, SHViT-S4; strides 16/32/64 -> TransConvFPN (transposed convs make strides 8 and 4), BN frozen for
# det.
_base_ = [
    "./_base_/models/mask_rcnn_fpn.py",
    "./_base_/datasets/coco_instance.py",
    "./_base_/schedules/schedule_1x.py",
    "./_base_/default_runtime.py",
]
model = dict(
    backbone=dict(
        _delete_=True,
        type="SHViTMM",
        model_name="shvit_s4",
        out_indices=(0, 1, 2),
        norm_eval=True,
        init_cfg=dict(type="Pretrained", checkpoint=None),
    ),
    neck=dict(
        _delete_=True,
        type="TransConvFPN",
        in_channels=[224, 336, 448],
        out_channels=256,
        num_outs=5,
        num_extra_trans_convs=2,
        pre_norm=False,
    ),
)
optim_wrapper = dict(optimizer=dict(lr=0.0001, weight_decay=0.05))
