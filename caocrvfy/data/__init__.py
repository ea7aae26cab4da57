"""Training data, the first stage: text and labels (`charset`), decoding images (`images`),
labelled folders (`folders`), synthetic captchas (`synthetic`) and input pipelines (`pipeline`).

Nothing here imports Keras except `pipeline`, so captcha-drawing processes stay light.
"""
