"""The Open Inference Protocol's (KServe V2) tensor datatypes: one table, shared by the
metered server's wire format (``wire``) and the http plugin's client, so the two cannot drift
apart."""
from __future__ import annotations

#: numpy dtype name → V2 datatype, for the dtypes a model input may have
DATATYPES: dict[str, str] = {"float32": "FP32", "float64": "FP64", "float16": "FP16", "int64": "INT64",
                             "int32": "INT32", "uint8": "UINT8", "int8": "INT8"}
#: V2 datatype → numpy dtype name
DTYPES: dict[str, str] = {v2: name for name, v2 in DATATYPES.items()}
#: every V2 datatype that holds numbers (BYTES holds strings)
NUMERIC = frozenset({"FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32",
                     "UINT64", "BOOL"})
