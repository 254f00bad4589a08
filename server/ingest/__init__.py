"""A client's request → an engine request: parse and check the body (``prepare.parse_chat``), fetch audio URLs
(``fetch``), decode every clip once and re-encode it for the engine (``prepare.finish_chat``, ``audio/``), count
it against the model's context (``context_budget``), and hand clips to engines on this host as files
(``shared_audio``). Ingest never talks to an engine."""
