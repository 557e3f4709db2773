"""Pathway rules: facet (issue 3); sacroiliac, epidural, knee and steroid exposure (``others``)."""
