# Cascade Mask R-CNN + FPN (mmdet 3.x): the detector type and its data preprocessor; every model config gives the
# neck, heads and train / test settings of its official config (tools/make_mm_configs.py).
custom_imports = dict(imports=["visionattn.mm"], allow_failed_imports=False)
model = dict(
    type="CascadeRCNN",
    data_preprocessor=dict(
        type="DetDataPreprocessor",
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_mask=True,
        pad_size_divisor=32,
    ),
    backbone=dict(type="ZooBackboneMM", model_name=None, out_indices=(0, 1, 2, 3)),
)
