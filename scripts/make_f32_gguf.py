#!/usr/bin/env python3
"""Writes an F32 copy of a GGUF (same metadata, every tensor dequantized by
gguf-py), so llama.cpp runs the same dense weights mwtop computes with.

Usage: python3 scripts/make_f32_gguf.py IN.gguf OUT.gguf
"""
import sys

import numpy as np
from gguf import GGUFReader, GGUFWriter, GGMLQuantizationType, GGUFValueType
from gguf.quants import dequantize


def main():
    src, dst = sys.argv[1], sys.argv[2]
    r = GGUFReader(src)
    arch = r.fields["general.architecture"].contents()
    w = GGUFWriter(dst + ".tmp", arch)
    for name, field in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        vtype = field.types[0]
        if name == "general.file_type":
            w.add_uint32(name, 0)  # all F32
            continue
        if vtype == GGUFValueType.ARRAY:
            w.add_array(name, field.contents())
        else:
            w.add_key_value(name, field.contents(), vtype)
    for t in r.tensors:
        data = dequantize(t.data, t.tensor_type).astype(np.float32)
        shape = [int(d) for d in reversed(t.shape.tolist())]
        w.add_tensor(t.name, data.reshape(shape), raw_dtype=GGMLQuantizationType.F32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    import os
    os.replace(dst + ".tmp", dst)


if __name__ == "__main__":
    main()
