"""Official Agent-Attention constructors -> zoo modules (transitional: the adapters still live beside the models)."""
import visionattn.backbones.agent  # noqa: F401
