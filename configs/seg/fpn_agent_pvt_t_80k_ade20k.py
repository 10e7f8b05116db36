# Semantic FPN 80k ADE20K, Agent-Swin-T (Mask R-CNN, UPerNet) and Agent-PVT-T (RetinaNet, Semantic FPN), as the
# paper's tables.
_base_ = [
    "./_base_/models/fpn.py",
    "./_base_/datasets/ade20k.py",
    "./_base_/schedules/schedule_80k.py",
    "./_base_/default_runtime.py",
]
model = dict(
    backbone=dict(
        _delete_=True,
        type="AgentAttentionMM",
        model_name="agent_pvt_t",
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.1,
        init_cfg=dict(type="Pretrained", checkpoint=None),
    ),
    neck=dict(in_channels=[64, 128, 320, 512]),
    decode_head=dict(num_classes=150),
)
optim_wrapper = dict(optimizer=dict(lr=0.0002, weight_decay=0.0001))
