"""Backbones: keras.Model feature extractors returning pyramid dicts "P3".."P7"."""
