"""Measuring a reader: `labelled` (read a labelled folder with a Predictor), `scores` (the maths
over readings), `figures` (plots) and `report` (report.md).

    from caocrvfy.evaluation import evaluate_folder
    evaluate_folder(Predictor.load("models/captcha-6x62"), "data/test-6x62")   # full_match, char_accuracy, ...
"""

from caocrvfy.evaluation.labelled import evaluate_folder, read_labelled_folder

__all__ = ["evaluate_folder", "read_labelled_folder"]
