"""Each module refuses one kind of hostile input with a typed 4xx, before it can cost anything: ``headers`` (Host,
Origin, content type, framing), ``auth`` (API keys), ``body`` (size, pace, large-body budget per client),
``json_tree`` (depth, numbers, surrogates, value count), ``fields`` (engine-internal fields, strict content parts),
``output`` (choices, logprobs, tokens), ``structured`` (grammar bombs) and ``url`` (audio URLs)."""
