"""Serving: one HTTP server (FastAPI + uvicorn) that SageMaker accepts as a container and OpenAI clients talk to.

- `config.py`   ServeConfig, the only source of the server's flags and defaults.
- `engine.py`   the continuous-batching engine (and SerialEngine, batching off) on a background thread.
- `text.py`     token ids -> text increments (UTF-8 safe, stop strings), bridged from the engine thread to asyncio.
- `protocol.py` request bodies (OpenAI chat / completions, Hugging Face `inputs`) -> validated jobs; answers.
- `app.py`      the FastAPI app: routes, errors, API key, the chat page; `server.py` runs it (graceful SIGTERM).
"""

from llmscratch.serve.config import ServeConfig

__all__ = ["ServeConfig"]
