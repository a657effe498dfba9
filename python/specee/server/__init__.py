"""`specee serve`: an OpenAI-compatible HTTP server over the engine.

app (routes), schemas (request validation), responses (OpenAI bodies and
SSE), decoding (one request's decode state), scheduler (slots, queue, the
compute worker), metrics (Prometheus), runtime (model, tokenizer, heads),
serve (uvicorn), chat.html (the chat page at /). docs/server.md says how
they fit together.
"""
