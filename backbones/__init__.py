"""Zoo backbones; importing this package registers every model with timm."""
