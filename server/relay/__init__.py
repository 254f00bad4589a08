"""Engine calls and their answers: ``upstream.Upstream`` sends a request to the engine the pool chose, retries
before the first byte and bounds what it reads; ``engine_stream`` relays an SSE stream and resumes it on another
engine when its engine fails (``resume``); ``client`` is the client's side (the response, the stream, disconnect
and stall watching); ``sse``, ``usage``, ``engine_errors`` and ``write_clock`` are their small parts."""
