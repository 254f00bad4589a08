"""vLLM's pure-Python sources on a machine without vLLM: unpack the packed tree, put it first on sys.path and
stand in for what cannot travel as Python source.

The plugins' encoder modules import vLLM (linear layers, activations, tensor-parallel helpers); a lent GPU
machine has PyTorch with CUDA but no vLLM and no network. `python -m bench.gpu.pack` (pack.py) writes
VENDOR_TAR here from the serving venv: every `vllm/**/*.py` plus the pure-Python packages vLLM needs at
import that such a machine lacks (CARRIED), and the compiled ones as wheels for the machine's Python
(WHEELS, optional). What still cannot be imported then gets a stand-in module (`_Anything`), only for the
names in STUBBED: vLLM's compiled extensions (`vllm._C`, ...) and packages vLLM imports at module level but
the encoders never call (HTTP server, tokenizer grammars, media decoders, ZeroMQ, ...).

`simulate=True` (the CPU dry run and its test) also hides the real packages named in STUBBED and vLLM itself
from the serving venv, so this machine imports the same way a lent one would.
"""

import importlib.abc
import importlib.machinery
import sys
import tarfile
import tempfile
import types
import zipfile
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENDOR_TAR = HERE / "vendor.tar.gz"
WHEELS = HERE / "wheels"  # cp312 manylinux wheels of CARRIED_COMPILED, packed into VENDOR_TAR's wheels/

# Pure-Python packages vLLM imports at module level that the lent machines' image lacks (KINDS.md's list).
CARRIED = ("pydantic", "annotated_types", "typing_inspection", "cachetools")
# Compiled ones vLLM's config classes need for real (pydantic's core; msgspec.Struct bases): wheels.
CARRIED_COMPILED = ("pydantic_core", "msgspec")
# Imported at module level on the encoders' import path, never called by them: stand-ins when missing.
STUBBED = (
    "vllm._C",
    "vllm._C_AVX2",
    "vllm._C_AVX512",
    "vllm._moe_C",
    "vllm._rocm_C",
    "vllm._flashmla_C",
    "vllm.cumem_allocator",
    "vllm.spinloop",
    "vllm.fs_io_C",
    "vllm.vllm_flash_attn",
    "zmq",
    "cbor2",
    "pybase64",
    "openai",
    "openai_harmony",
    "fastapi",
    "starlette",
    "xgrammar",
    "llguidance",
    "partial_json_parser",
    "av",
    "soxr",
)


class _Anything(types.ModuleType):
    """A module, class, callable, decorator and container at once: every attribute is another one."""

    def __init__(self, name: str):
        super().__init__(name)
        self.__path__: list[str] = []  # a package, so `import stub.sub` works

    def __getattr__(self, name: str) -> "_Anything":
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        value = _Anything(f"{self.__name__}.{name}")
        setattr(self, name, value)
        return value

    def __call__(self, *args: object, **kwargs: object) -> object:
        if len(args) == 1 and not kwargs and (isinstance(args[0], type) or callable(args[0])):
            return args[0]  # used as a decorator
        return _Anything(f"{self.__name__}()")

    def __getitem__(self, key: object) -> "_Anything":
        return self

    def __get_pydantic_core_schema__(self, source: object, handler: object) -> object:
        return _any_schema()  # a stand-in type inside a pydantic model's fields: anything validates

    def __or__(self, other: object) -> "_Anything":  # `stub.Socket | None` in annotations
        return self

    __ror__ = __or__

    def __mro_entries__(self, bases: tuple) -> tuple:
        return (_Base,)

    def __iter__(self):
        return iter(())

    def __bool__(self) -> bool:
        return False


class _Base:
    """What a class deriving from a stand-in derives from."""

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__()

    @classmethod
    def __get_pydantic_core_schema__(cls, source: object, handler: object) -> object:
        return _any_schema()


def _any_schema() -> object:
    from pydantic_core import core_schema

    return core_schema.any_schema()


def _covered(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Last on sys.meta_path: gives a stand-in for a STUBBED name that nothing else could import."""

    def find_spec(self, fullname, path=None, target=None):
        if _covered(fullname, STUBBED):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        return _Anything(spec.name)

    def exec_module(self, module) -> None:
        pass


class _Hider(importlib.abc.MetaPathFinder):
    """First on sys.meta_path (simulation only): the serving venv's copies of these names are not there."""

    def __init__(self, hidden: Sequence[str], allowed_root: Path):
        self.hidden, self.allowed_root = tuple(hidden), str(allowed_root)

    def find_spec(self, fullname, path=None, target=None):
        if not _covered(fullname, self.hidden):
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path if path else [self.allowed_root])
        if spec is not None and spec.origin and spec.origin.startswith(self.allowed_root):
            return spec  # the packed copy
        if _covered(fullname, STUBBED):
            return _StubFinder().find_spec(fullname)
        raise ModuleNotFoundError(f"{fullname} is hidden (simulating a machine without it)", name=fullname)


def install(tar: Path = VENDOR_TAR, simulate: bool = False) -> Path:
    """Unpack `tar` into a temporary directory, put it first on sys.path, add the stand-ins; -> that directory.

    Call before anything imports vllm or a plugin module."""
    if "vllm" in sys.modules:
        raise RuntimeError("vllm is already imported: install the packed sources first")
    if not tar.is_file():
        raise FileNotFoundError(f"{tar} is missing: run `python -m bench.gpu.pack` first")
    root = Path(tempfile.mkdtemp(prefix="alm-vendor-"))
    with tarfile.open(tar) as archive:
        archive.extractall(root, filter="data")
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    for wheel in sorted((root / "wheels").glob(f"*-{tag}-*.whl")):
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(root)
    sys.path.insert(0, str(root))
    if simulate:
        sys.meta_path.insert(0, _Hider(("vllm", *CARRIED, *STUBBED), root))
    sys.meta_path.append(_StubFinder())
    return root
