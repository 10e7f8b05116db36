# UPerNet 160k ADE20K 512x512, agent_swin_s; official README: mIoU single-scale / multi-scale 48.08 / -.
# Official: github.com/LeapLabTHU/Agent-Attention@207ce3eb357b
# downstream/segmentation/configs/agent_swin/upernet_agent_swin_s_9-12-14-7.py; 2 images per GPU x 8 GPUs. Written by
# tools/make_mm_configs.py from the official file (values carried over as they are). Multi-scale + flip test:
# tools/seg_test.py --tta (ratios [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]). Left out: backbone keys the official class
# ignores (act_cfg, embed_dims, norm_cfg, pretrain_img_size, strides, use_abs_pos_embed; inherited from a _base_
# backbone).
_base_ = [
    './_base_/models/upernet.py',
    './_base_/datasets/ade20k.py',
    './_base_/schedules/schedule_160k.py',
    './_base_/default_runtime.py',
]
model = dict(
    backbone=dict(
        _delete_=True,
        type='AgentAttentionMM',
        model_name='agent_swin_s',
        out_indices=(0, 1, 2, 3),
        patch_size=4,
        window_size=56,
        mlp_ratio=4,
        depths=[2, 2, 18, 2],
        num_heads=[3, 6, 12, 24],
        qkv_bias=True,
        qk_scale=None,
        patch_norm=True,
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.3,
        img_size=224,
        in_chans=3,
        embed_dim=96,
        ape=False,
        agent_num=[9, 16, 49, 49],
        downstream_agent_shapes=[(9, 9), (12, 12), (7, 7), (7, 7)],
        kernel_size=3,
        attn_type='AABB',
        scale=-0.5,
        init_cfg=dict(type='Pretrained', checkpoint=None),
    ),
    decode_head=dict(
        type='UPerHead',
        in_channels=[96, 192, 384, 768],
        in_index=[0, 1, 2, 3],
        pool_scales=(1, 2, 3, 6),
        channels=512,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
    ),
    auxiliary_head=dict(
        type='FCNHead',
        in_channels=384,
        in_index=2,
        channels=256,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4),
    ),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'),
    data_preprocessor=dict(size=(512, 512)),
)
train_dataloader = dict(batch_size=2)
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=6e-05, weight_decay=0.01, betas=(0.9, 0.999)),
    paramwise_cfg=dict(
        custom_keys=dict(
            absolute_pos_embed=dict(decay_mult=0.0),
            relative_position_bias_table=dict(decay_mult=0.0),
            norm=dict(decay_mult=0.0),
            an_bias=dict(decay_mult=0.0),
            na_bias=dict(decay_mult=0.0),
            ah_bias=dict(decay_mult=0.0),
            aw_bias=dict(decay_mult=0.0),
            ha_bias=dict(decay_mult=0.0),
            wa_bias=dict(decay_mult=0.0),
        ),
    ),
)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-06, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=160000, by_epoch=False),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=160000, val_interval=16000)
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
