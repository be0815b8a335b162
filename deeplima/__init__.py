"""DeepLIMa end to end: one predictor over the mass detector and the calcification U-Net, model bundles,
operating points and the HTML report.

    from deeplima import Pipeline
    result = Pipeline("bundle/")("study/1.dcm")      # findings in original image pixels
"""

from .bundle import Bundle, load_bundle, save_bundle
from .pipeline import ImageResult, Pipeline, collect_inputs, write_predictions

__all__ = [
    "Bundle",
    "ImageResult",
    "Pipeline",
    "collect_inputs",
    "load_bundle",
    "save_bundle",
    "write_predictions",
]
