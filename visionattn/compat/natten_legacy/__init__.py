"""NATTEN 0.14-0.17 public API on visionattn kernels (see visionattn.compat)."""
