import pytest

from assistant.store.gguf_file import FILE_TYPES, GGML_TYPES, GGUFError, read_gguf


def test_reads_the_embedded_model(default_gguf):
    info = read_gguf(default_gguf)
    assert info.version == 3
    assert info.architecture == "llama"
    assert info.quantization == "Q4_1"
    assert info.context_length == 8192
    assert info.arch_value("block_count") == 30
    assert info.arch_value("attention.head_count_kv") == 3
    assert info.n_params == 134_515_008
    assert info.data_end == info.file_size == 98_362_432
    assert "<|im_start|>" in info.chat_template


def test_truncated_file_is_named_as_such(model_copy):
    with open(model_copy, "r+b") as f:
        f.truncate(model_copy.stat().st_size - 4096)
    with pytest.raises(GGUFError, match="truncated.*need 98362432 bytes"):
        read_gguf(model_copy)


def test_file_cut_inside_the_header(model_copy):
    with open(model_copy, "r+b") as f:
        f.truncate(500_000)  # inside the token list
    with pytest.raises(GGUFError, match="truncated or corrupt"):
        read_gguf(model_copy)


def test_not_a_gguf(tmp_path):
    p = tmp_path / "model.gguf"
    p.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(GGUFError, match="not a GGUF file"):
        read_gguf(p)


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(GGUFError, match="only 0 bytes"):
        read_gguf(empty)
    with pytest.raises(GGUFError, match="not found"):
        read_gguf(tmp_path / "nope.gguf")


def test_corrupt_length_does_not_allocate(model_copy):
    data = bytearray(model_copy.read_bytes()[:4096])
    data[24:32] = (2**62).to_bytes(8, "little")  # first metadata key length
    model_copy.write_bytes(bytes(data))
    with pytest.raises(GGUFError, match="truncated or corrupt"):
        read_gguf(model_copy)


def test_file_type_table_matches_llama_cpp():
    import llama_cpp

    for name in dir(llama_cpp):
        if name.startswith("LLAMA_FTYPE_MOSTLY_") or name == "LLAMA_FTYPE_ALL_F32":
            value = getattr(llama_cpp, name)
            assert FILE_TYPES[value] == name.removeprefix("LLAMA_FTYPE_MOSTLY_").removeprefix("LLAMA_FTYPE_ALL_")


def test_ggml_type_table_matches_gguf_package():
    gguf = pytest.importorskip("gguf")
    for t, (block, size) in gguf.GGML_QUANT_SIZES.items():
        if int(t) in GGML_TYPES:
            ours = GGML_TYPES[int(t)]
            assert (ours.name, ours.block_size, ours.type_size) == (t.name, block, size)
