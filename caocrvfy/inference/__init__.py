"""Reading captchas with a trained model: `ctc` (CTC maths), `decoding` (outputs to text and
confidence), `predictor` (Predictor: a model with its config.json), `runtimes` (ONNX, TFLite,
SavedModel files) and `export` (writing them).

    from caocrvfy.inference import Predictor
    reader = Predictor.load("models/captcha-6x62")
    for p in reader.predict(["a.png"]): print(p.text, p.confidence)
"""

from caocrvfy.inference.decoding import Constraint, Prediction
from caocrvfy.inference.predictor import Predictor, expand_inputs

__all__ = ["Constraint", "Prediction", "Predictor", "expand_inputs"]
