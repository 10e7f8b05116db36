# RetinaNet 1x, SLAB-PVT-T; position tables are tied to img_size (resized by the checkpoint filter): inputs are padded
# up to it. RepBN BatchNorms kept in eval for detection (norm_eval), as the official SLAB detection code.
_base_ = [
    "./_base_/models/retinanet_fpn.py",
    "./_base_/datasets/coco_detection.py",
    "./_base_/schedules/schedule_1x.py",
    "./_base_/default_runtime.py",
]
model = dict(
    backbone=dict(
        _delete_=True,
        type="SLABMM",
        model_name="slab_pvt_t",
        out_indices=(1, 2, 3),
        img_size=1344,
        drop_path_rate=0.1,
        norm_eval=True,
        init_cfg=dict(type="Pretrained", checkpoint=None),
    ),
    neck=dict(in_channels=[128, 320, 512]),
)
optim_wrapper = dict(optimizer=dict(lr=0.0001, weight_decay=0.05))
