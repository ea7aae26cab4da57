"""caocrvfy: train Keras models that read text captchas, and use them.

Importing the package registers its Keras objects, so a saved model loads with plain
`keras.models.load_model(path)`. Where things live: docs/architecture.md.
"""

import os

# TensorFlow turns its oneDNN CPU kernels on by itself only on CPUs with AVX-512 VNNI/BF16 or AMX;
# on an AVX2 CPU they still train 1.4-2x as fast as the default Eigen kernels (BENCHMARKS.md).
# Read when TensorFlow is imported, so it takes effect only if caocrvfy is imported first.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's Python-side start-up chatter

__version__ = "0.2.0"

# Captcha-drawing worker processes set this: they need Pillow only, not Keras and TensorFlow.
if not os.environ.get("CAOCRVFY_DRAWING_WORKER"):
    from caocrvfy.startup import captured_native_stderr

    with captured_native_stderr():  # TensorFlow's native start-up lines (see startup.py)
        import keras  # noqa: F401

    from caocrvfy import focal_loss, losses, metrics  # noqa: F401  (registers Keras objects)
    from caocrvfy.focal_loss import BinaryFocalLoss
    from caocrvfy.losses import FocalCTCLoss

    __all__ = ["BinaryFocalLoss", "FocalCTCLoss", "__version__"]
