"""Segmentation models: backbones, decode heads, context plug-ins, the Segmentor."""
