"""The supervisor: the ``alm`` command, THE engine contract (``alm.engine``), and ``alm serve`` (N engines +
the gateway on one host). The gateway itself is ``server/``; the model plugin is ``model_plugins/``."""
