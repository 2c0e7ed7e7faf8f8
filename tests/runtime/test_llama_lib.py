"""The AMX workaround: read from llama.cpp's own system line, applied to what ``Llama`` starts from."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest

from assistant.runtime.llama_lib import extra_buffers_off, has_amx, llama_cpp, system_info, without_extra_buffers

# Real system lines, as llama-cpp-python 0.3.36 prints them.
SAPPHIRE = (
    "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | AVX512 = 1 | "
    "AVX512_VBMI = 1 | AVX512_VNNI = 1 | AVX512_BF16 = 1 | AMX_INT8 = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | "
)
EPYC = "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 | LLAMAFILE = 1 | REPACK = 1 | "


def test_amx_is_read_from_the_system_line():
    assert has_amx(SAPPHIRE)
    assert not has_amx(EPYC)
    assert not has_amx("CPU : AMX_INT8 = 0 | AVX512 = 1 | ")


def test_the_patch_turns_extra_buffers_off_once():
    original = llama_cpp().llama_model_default_params  # the package's own name, never patched
    calls = []

    def default():
        calls.append(1)
        return original()

    bindings = types.ModuleType("bindings")
    bindings.llama_model_default_params = default
    without_extra_buffers(bindings)
    first = bindings.llama_model_default_params
    without_extra_buffers(bindings)
    assert bindings.llama_model_default_params is first  # not wrapped twice
    params = bindings.llama_model_default_params()
    assert params.use_extra_bufts is False
    assert len(calls) == 1
    assert default().use_extra_bufts is True  # the library's own default, untouched


def test_llama_starts_from_the_patched_defaults_exactly_on_an_amx_build():
    """In a fresh interpreter: before ``llama_cpp()`` Llama's defaults are the library's; after, off on AMX."""
    code = (
        "import llama_cpp.llama as L\n"
        "before = L.llama_cpp.llama_model_default_params().use_extra_bufts\n"
        "from assistant.runtime.llama_lib import llama_cpp, has_amx, system_info\n"
        "lib = llama_cpp()\n"
        "after = L.llama_cpp.llama_model_default_params().use_extra_bufts\n"
        "print(before, after, has_amx(system_info(lib)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    before, after, amx = (w == "True" for w in out)
    assert before is True
    assert after is (not amx)


@pytest.mark.skipif(not has_amx(system_info(llama_cpp())), reason="this llama.cpp build has no AMX kernels")
def test_this_amx_build_loads_without_extra_buffers():
    assert extra_buffers_off(llama_cpp())
