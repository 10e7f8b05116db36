"""Convert an official checkpoint into timm's hub layout, so teams can mirror the released weights.

    python tools/convert_checkpoint.py dinat_mini dinat_mini_in1k_224.pth hub/dinat_mini
    python tools/convert_checkpoint.py dinat_large.in22k dinat_large_in22k_224.pth hub/dinat_large_in22k
    python tools/convert_checkpoint.py agent_cswin_b agent_cswin_b.pth hub/agent_cswin_b --ema

Writes OUT/model.safetensors (timm key names) and OUT/config.json (architecture, model args, pretrained cfg);
load with `timm.create_model("local-dir:OUT")` or `timm.create_model(NAME, pretrained=True,
pretrained_cfg_overlay=dict(file="OUT/model.safetensors"))` after `import visionattn`. The checkpoint goes through
the family's checkpoint filter and must fit completely (classifier included: a checkpoint with another class count
needs `MODEL.tag` whose cfg says so, or num_classes=N). OUT must be new or empty (an earlier output of this tool is
replaced). Exit 2 with one line on stderr for any user error.
"""
import sys

from visionattn.train.hub import convert_main

if __name__ == "__main__":
    sys.exit(convert_main())
