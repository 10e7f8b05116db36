# COCO instance segmentation with the DETR-style multi-scale AutoAugment training of the papers' 3x recipes (and
# Agent-Swin / SLAB 1x): either a short side of 480-800 (step 32, long side <= 1333), or a 400-600 resize, a
# 384-600 absolute-range crop and a 480-800 resize; flip 0.5. Test: 1333x800 single scale.
_base_ = ["./coco_instance.py"]
backend_args = None
train_pipeline = [
    dict(type="LoadImageFromFile", backend_args=backend_args),
    dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
    dict(type="RandomFlip", prob=0.5),
    dict(
        type="RandomChoice",
        transforms=[
            [
                dict(type="RandomChoiceResize",
                     scales=[(1333, s) for s in range(480, 801, 32)],
                     keep_ratio=True),
            ],
            [
                dict(type="RandomChoiceResize", scales=[(1333, 400), (1333, 500), (1333, 600)], keep_ratio=True),
                dict(type="RandomCrop", crop_type="absolute_range", crop_size=(384, 600), allow_negative_crop=True),
                dict(type="RandomChoiceResize",
                     scales=[(1333, s) for s in range(480, 801, 32)],
                     keep_ratio=True),
            ],
        ],
    ),
    dict(type="PackDetInputs"),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
