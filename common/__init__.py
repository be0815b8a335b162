"""Shared building blocks: DICOM reading, pre-processing, metrics and plots."""
