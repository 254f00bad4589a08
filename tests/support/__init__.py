"""What tests and benches share: scriptable fake engines and a thread server (fakes), synthetic audio
(audio_synth), raw-socket clients (hostile), polling (waiting), the hostile corpus (corpus), and real vLLM engines
started through the engine contract (engine)."""
