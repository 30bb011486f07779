"""`tilelli serve`: an OpenAI-compatible HTTP server for one checkpoint, with a web chat page.

    protocol.py  OpenAI's request/response shapes, checked field by field (clear 400s)
    worker.py    the one decode thread that owns the model and batches every request
    text.py      model bytes -> whole UTF-8 characters with their confidences
    app.py       the FastAPI routes: completions, chat, models, health, the page
    static/      index.html, the self-contained chat page

`tilelli.serve.app.create_app(load, model_name)` builds the app; `tilelli.commands.serve`
runs it with uvicorn. See docs/serve.md.
"""
