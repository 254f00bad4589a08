"""MiDashengLM plugin for vLLM, loaded through the `vllm.general_plugins` entry point.

vLLM calls `register()` in every process it starts (API server, engine core,
workers), possibly more than once; it only (over)writes two registry entries, so it is idempotent.
"""

ARCHITECTURE = "MiDashengLMModel"  # `architectures` in the published config.json
MODEL_CLASS = "model_plugins.midashenglm.model:MiDashengLM"


def register() -> None:
    from vllm import ModelRegistry
    from vllm.transformers_utils.config import _CONFIG_REGISTRY

    from .config import MiDashengLMConfig

    # vLLM 0.32 ships an in-tree MiDashengLM under the same architecture name (and a
    # config class for model_type "midashenglm"); ours replace both. The model class
    # is a lazy "module:Class" string so nothing heavy is imported here.
    _CONFIG_REGISTRY[MiDashengLMConfig.model_type] = MiDashengLMConfig
    ModelRegistry.register_model(ARCHITECTURE, MODEL_CLASS)
