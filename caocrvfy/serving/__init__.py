"""Reading captchas over HTTP: `requests` (limits, parsing uploads), `batcher` (server-side
batching) and `app` (the FastAPI app and `run`). FastAPI and uvicorn come with `caocrvfy[serve]`.
"""
