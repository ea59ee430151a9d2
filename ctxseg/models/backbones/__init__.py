"""Backbones (each returns a list of feature maps and exposes out_channels)."""
