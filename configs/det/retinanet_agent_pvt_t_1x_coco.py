# RetinaNet 1x, Agent-Swin-T (Mask R-CNN, UPerNet) and Agent-PVT-T (RetinaNet, Semantic FPN), as the paper's tables.
_base_ = [
    "./_base_/models/retinanet_fpn.py",
    "./_base_/datasets/coco_detection.py",
    "./_base_/schedules/schedule_1x.py",
    "./_base_/default_runtime.py",
]
model = dict(
    backbone=dict(
        _delete_=True,
        type="AgentAttentionMM",
        model_name="agent_pvt_t",
        out_indices=(1, 2, 3),
        drop_path_rate=0.1,
        init_cfg=dict(type="Pretrained", checkpoint=None),
    ),
    neck=dict(in_channels=[128, 320, 512]),
)
optim_wrapper = dict(optimizer=dict(lr=0.0002, weight_decay=0.0001))
