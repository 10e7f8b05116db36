# Semantic FPN 40k ADE20K 512x512, efficientvim_m4; official README: mIoU single-scale / multi-scale 41.3 / -.
# Official: github.com/mlvlab/EfficientViM@304340cb9c33
# segmentation/configs/sem_fpn/fpn_efficientvim_m4_ade20k_40k.py; 4 images per GPU x 8 GPUs. Written by
# tools/make_mm_configs.py from the official file (values carried over as they are). Multi-scale + flip test:
# tools/seg_test.py --tta (ratios [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]). Left out: backbone keys the official class
# ignores (contract_dilation, depth, dilations, norm_cfg, norm_eval, num_stages, out_indices, strides; swallowed by
# its **kwargs, e.g. inherited from a _base_ backbone). Official test: single scale, AlignResize (each side resized to
# a multiple of 32) where this one resizes only; the backbone takes any size.
_base_ = [
    './_base_/models/fpn.py',
    './_base_/datasets/ade20k.py',
    './_base_/schedules/schedule_160k.py',
    './_base_/default_runtime.py',
]
model = dict(
    backbone=dict(
        _delete_=True,
        type='EfficientViMMM',
        model_name='efficientvim_m4',
        out_indices=(0, 1, 2),
        init_cfg=dict(type='Pretrained', checkpoint=None),
    ),
    neck=dict(type='FPN', in_channels=[224, 320, 512], out_channels=256, num_outs=4),
    decode_head=dict(
        type='FPNHead',
        in_channels=[256, 256, 256, 256],
        in_index=[0, 1, 2, 3],
        feature_strides=[4, 8, 16, 32],
        channels=128,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
    ),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'),
    data_preprocessor=dict(size=(512, 512)),
)
train_dataloader = dict(batch_size=4)
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=0.0002, weight_decay=0.0001),
)
param_scheduler = [dict(type='PolyLR', eta_min=1e-06, power=0.9, begin=0, end=40000, by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=40000, val_interval=4000)
tta_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(
        type='TestTimeAug',
        transforms=[
            [
                dict(type='Resize', scale_factor=0.5, keep_ratio=True),
                dict(type='Resize', scale_factor=0.75, keep_ratio=True),
                dict(type='Resize', scale_factor=1.0, keep_ratio=True),
                dict(type='Resize', scale_factor=1.25, keep_ratio=True),
                dict(type='Resize', scale_factor=1.5, keep_ratio=True),
                dict(type='Resize', scale_factor=1.75, keep_ratio=True),
            ],
            [
                dict(type='RandomFlip', prob=0.0, direction='horizontal'),
                dict(type='RandomFlip', prob=1.0, direction='horizontal'),
            ],
            [dict(type='LoadAnnotations')],
            [dict(type='PackSegInputs')],
        ],
    ),
]
