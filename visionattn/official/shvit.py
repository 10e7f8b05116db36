"""Official SHViT constructor -> timm's SHViT (transitional: the adapter still lives in visionattn.adopted)."""
import visionattn.adopted  # noqa: F401
