"""DeepLIMa end to end: one predictor over the mass detector and the calcification U-Net, model
bundles, the prediction folder, operating points and the HTML report.

    from deeplima import Pipeline
    result = Pipeline("bundle/")("study/1.dcm")      # findings in original image pixels

The command line is :mod:`deeplima.cli` (``deeplima ...``, ``python -m deeplima ...``).
"""

import warnings

from common.inputs import collect_inputs

with warnings.catch_warnings():
    # fvcore (imported with detectron2) calls torch.jit.script when it is imported, which torch 2.x
    # reports as deprecated: a notice about third-party code on every start that users cannot act on
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated",
                            category=FutureWarning)
    from .bundle import Bundle, load_bundle, save_bundle
    from .pipeline import FindingsPredictor, ImageResult, Pipeline
    from .writer import write_predictions

__all__ = [
    "Bundle",
    "FindingsPredictor",
    "ImageResult",
    "Pipeline",
    "collect_inputs",
    "load_bundle",
    "save_bundle",
    "write_predictions",
]
