"""Label processing, patch index, balanced sampling and the patch dataset (paper §4.2.1, §2.2.2)."""
