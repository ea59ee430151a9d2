"""Datasets over prepared indexes, transforms, preparation."""
