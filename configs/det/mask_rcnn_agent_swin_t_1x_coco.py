# Mask R-CNN 1x, Agent-Swin-T (Mask R-CNN, UPerNet) and Agent-PVT-T (RetinaNet, Semantic FPN), as the paper's tables.
_base_ = [
    "./_base_/models/mask_rcnn_fpn.py",
    "./_base_/datasets/coco_instance.py",
    "./_base_/schedules/schedule_1x.py",
    "./_base_/default_runtime.py",
]
model = dict(
    backbone=dict(
        _delete_=True,
        type="AgentAttentionMM",
        model_name="agent_swin_t",
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.2,
        init_cfg=dict(type="Pretrained", checkpoint=None),
    ),
    neck=dict(in_channels=[96, 192, 384, 768]),
)
optim_wrapper = dict(optimizer=dict(lr=0.0001, weight_decay=0.05))
