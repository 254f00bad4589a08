"""The model families the gateway knows: one registry (``registry.FAMILIES``: architectures, clip window, token
formula, prompts, tiny maker) that the gateway, ``alm serve`` / ``alm engine`` and ``alm make-tiny`` all read;
``facts`` is the gateway's view (``ModelFacts``, ``ALM_MODEL_FACTS``), ``tokens`` the audio-token formulas. Pure
data: it imports nothing else of the gateway."""
