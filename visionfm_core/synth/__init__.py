"""Synthetic ophthalmic images: quality and privacy checks that do not depend on how the images were made.

- `quality`: Fréchet distance and k-NN precision/recall in a VisionFM encoder's feature space, the memorisation
  check (nearest training image by features and pixel SSIM), and `synth_report` that writes them as a page;
- `pages`: the static HTML pages;
- `turing`: a blinded visual Turing test page for readers and the scorer of their answers.
"""

from visionfm_core.synth.quality import (
                      COSINE_THRESHOLD,
                      SSIM_THRESHOLD,
                      FeatureSet,
                      SynthError,
                      extract_features,
                      frechet_distance,
                      knn_precision_recall,
                      load_feature_encoder,
                      memorisation,
                      synth_report,
)
from visionfm_core.synth.turing import format_score, score_turing, turing_page

__all__ = ["COSINE_THRESHOLD", "SSIM_THRESHOLD", "FeatureSet", "SynthError", "extract_features", "frechet_distance",
           "knn_precision_recall", "load_feature_encoder", "memorisation", "synth_report", "format_score",
           "score_turing", "turing_page"]
