# RetinaNet 1x, GC ViT-T (timm) built for img_size (windows img/32, /32, /16, /32); smaller inputs are padded up to
# it. The paper reports Mask R-CNN 3x only.
_base_ = [
    "./_base_/models/retinanet_fpn.py",
    "./_base_/datasets/coco_detection.py",
    "./_base_/schedules/schedule_1x.py",
    "./_base_/default_runtime.py",
]
model = dict(
    backbone=dict(
        _delete_=True,
        type="GCViTMM",
        model_name="gcvit_tiny",
        out_indices=(1, 2, 3),
        img_size=1344,
        drop_path_rate=0.2,
        init_cfg=dict(type="Pretrained", checkpoint=None),
    ),
    neck=dict(in_channels=[128, 256, 512]),
)
optim_wrapper = dict(optimizer=dict(lr=0.0001, weight_decay=0.05))
