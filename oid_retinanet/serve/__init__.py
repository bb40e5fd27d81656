"""The web demo: a page where one uploads a photo and sees the boxes, and the JSON API behind it.

`make serve` runs `python -m oid_retinanet.serve` (see `__main__.py`): one model, loaded once, answers every
request through the same code as stage 4 (`retinanet_inference_example.py`) and stage 5 (the parent classes).

- `service.py`: reading uploads safely, the model thread that queues and batches requests, the answer's boxes.
- `app.py`: the FastAPI application: the page, `POST /api/detect`, `GET /api/health`, the upload limits.
- `static/`: the page (HTML, JavaScript, CSS); it only talks to the API.
"""
