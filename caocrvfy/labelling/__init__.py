"""Labelling: `caocrvfy label DIR`, a local page that shows the images the model is least sure
of, its reading filled in, saves each answer to DIR/labels.csv at once and trains on them.

store.py (the folder, labels.csv, undo), suggestions.py (the model's readings and which model),
jobs.py ("train now" in the background), page.py (the FastAPI app and `--print-next`),
static/ (the page: HTML, CSS, a little JavaScript).
"""
