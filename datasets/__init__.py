"""Dataset converters into the canonical form, and the synthetic mammogram generator."""
