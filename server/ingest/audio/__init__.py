"""Client audio → 16 kHz mono float32, within limits: the container sniffed from its bytes (``sniff``), decoded
in blocks by libsndfile or a confined FFmpeg (``decode``), mixed down and resampled as it goes (``sink``); what
the gateway accepts and its errors (``limits``); ``clip`` is the surface the rest of the gateway calls
(``decode_audio``, ``AudioLimits``, ``Clip``, the WAV encoders)."""
