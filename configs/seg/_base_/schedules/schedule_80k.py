# Semantic FPN 80k (PVT / BiFormer style): AdamW lr 2e-4, wd 1e-4, poly power 0.9.
_base_ = ["./schedule_160k.py"]
optim_wrapper = dict(optimizer=dict(lr=2e-4, weight_decay=1e-4))
param_scheduler = [dict(type="PolyLR", eta_min=0.0, power=0.9, begin=0, end=80000, by_epoch=False)]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=80000, val_interval=8000)
default_hooks = dict(checkpoint=dict(interval=8000))
