"""The llama-cpp-python module, with llama.cpp's AMX matmul kept out of the way.

A native build of llama-cpp-python on a CPU with AMX (Sapphire Rapids and later) repacks Q4_K,
Q6_K, Q8_0 and other quantized weights into an AMX buffer, and on some of these machines the first
matmul there segfaults (``ggml_backend_amx_mul_mat``; ggml-org/llama.cpp#20824, closed unfixed).
That kills the process with no error. llama-cpp-python exposes no switch for it, so every model we
load goes through ``llama_cpp()``, which, on such a build, loads the weights without llama.cpp's
extra buffer types: plain CPU buffers, no AMX (and no weight repacking, which only some CPUs use).
"""

from __future__ import annotations

from types import ModuleType

_MARK = "_assistant_without_extra_buffers"


def llama_cpp() -> ModuleType:
    """``import llama_cpp``, with models loaded without extra buffer types where the build has AMX."""
    import llama_cpp as lib

    if has_amx(system_info(lib)):
        without_extra_buffers(lib.llama_cpp)
    return lib


def system_info(lib: ModuleType) -> str:
    return lib.llama_print_system_info().decode("utf-8", errors="replace")


def has_amx(info: str) -> bool:
    """Whether llama.cpp's system line says its CPU backend was compiled with AMX kernels."""
    return any(part.strip().replace(" ", "") == "AMX_INT8=1" for part in info.split("|"))


def without_extra_buffers(bindings: ModuleType) -> None:
    """Make ``llama_model_default_params`` (what ``Llama`` starts from) turn extra buffer types off.

    Idempotent. Patches the bindings module that ``llama_cpp.Llama`` reads its defaults from.
    """
    default = bindings.llama_model_default_params
    if getattr(default, _MARK, False):
        return

    def params():
        p = default()
        p.use_extra_bufts = False
        return p

    setattr(params, _MARK, True)
    setattr(bindings, "llama_model_default_params", params)  # noqa: B010 (a module attribute mypy cannot see)


def extra_buffers_off(lib: ModuleType) -> bool:
    """Whether models loaded through ``lib`` now skip extra buffer types (for reports)."""
    return getattr(lib.llama_cpp.llama_model_default_params, _MARK, False)
