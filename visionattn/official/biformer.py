"""Official BiFormer constructors -> zoo modules (transitional: the adapters still live beside the models)."""
import visionattn.backbones.biformer  # noqa: F401
import visionattn.layers.bra  # noqa: F401
