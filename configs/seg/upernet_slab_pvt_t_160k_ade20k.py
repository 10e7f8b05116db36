# UPerNet 160k ADE20K, SLAB-PVT-T; position tables are tied to img_size (resized by the checkpoint filter): inputs are
# padded up to it. RepBN BatchNorms kept in eval for detection (norm_eval), as the official SLAB detection code.
_base_ = [
    "./_base_/models/upernet.py",
    "./_base_/datasets/ade20k.py",
    "./_base_/schedules/schedule_160k.py",
    "./_base_/default_runtime.py",
]
model = dict(
    backbone=dict(
        _delete_=True,
        type="SLABMM",
        model_name="slab_pvt_t",
        out_indices=(0, 1, 2, 3),
        img_size=512,
        drop_path_rate=0.1,
        init_cfg=dict(type="Pretrained", checkpoint=None),
    ),
    decode_head=dict(in_channels=[64, 128, 320, 512], num_classes=150),
    auxiliary_head=dict(in_channels=320, num_classes=150),
)
optim_wrapper = dict(optimizer=dict(lr=6e-05, weight_decay=0.01))
