"""emoji3d: personal 3D emoji stickers."""
__version__ = "0.1.0"
