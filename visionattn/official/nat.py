"""Official NAT / DiNAT constructors -> zoo modules (transitional: the adapters still live beside the models)."""
import visionattn.backbones.nat  # noqa: F401
