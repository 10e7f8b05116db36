"""Official SLAB constructors -> zoo modules (transitional: the adapters still live beside the models)."""
import visionattn.backbones.slab  # noqa: F401
