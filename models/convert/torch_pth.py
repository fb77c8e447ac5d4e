"""Read a legacy (pre-1.6, non-zip) PyTorch ``.pth`` state dict without torch.

The legacy format is a concatenation of pickles followed by raw storages:
magic number, protocol version, system info, the state-dict pickle (tensors refer to
storages by persistent id), the list of storage keys, then for each key in that order an
int64 element count and the little-endian storage bytes.
"""
import collections
import pickle
import struct

import numpy as np

_DTYPES = {"FloatStorage": np.float32, "LongStorage": np.int64, "IntStorage": np.int32,
           "HalfStorage": np.float16, "DoubleStorage": np.float64}
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if name == "_rebuild_tensor_v2":
            return lambda storage, offset, size, stride, *rest: ("tensor", storage, offset, size, stride)
        if name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch" and name in _DTYPES:
            return name
        raise pickle.UnpicklingError(f"unexpected global {module}.{name} in checkpoint")

    def persistent_load(self, pid):
        # ('storage', storage_type, key, location, numel[, view_metadata])
        return {"type": pid[1], "key": pid[2], "numel": pid[4]}


def load_state_dict(path):
    with open(path, "rb") as f:
        if _Unpickler(f).load() != LEGACY_MAGIC:
            raise ValueError(f"{path}: not a legacy PyTorch checkpoint (bad magic number)")
        _Unpickler(f).load()  # protocol version
        info = _Unpickler(f).load()
        if not info.get("little_endian", True):
            raise ValueError(f"{path}: big-endian checkpoints are not supported")
        state = _Unpickler(f).load()
        keys = _Unpickler(f).load()
        storages = {}
        for key in keys:
            (numel,) = struct.unpack("<q", f.read(8))
            storages[key] = (f.tell(), numel)
            # element size from any tensor that uses this storage
            f.seek(numel * _storage_itemsize(state, key), 1)
        out = collections.OrderedDict()
        for name, (_, storage, offset, size, stride) in state.items():
            dtype = _DTYPES[storage["type"]]
            pos, numel = storages[storage["key"]]
            f.seek(pos)
            flat = np.frombuffer(f.read(numel * np.dtype(dtype).itemsize), dtype=dtype)
            arr = np.lib.stride_tricks.as_strided(
                flat[offset:], shape=size, strides=[s * flat.itemsize for s in stride])
            out[name] = np.array(arr)
        return out


def _storage_itemsize(state, key):
    for _, storage, *_ in state.values():
        if storage["key"] == key:
            return np.dtype(_DTYPES[storage["type"]]).itemsize
    raise ValueError(f"storage {key} is not used by any tensor")
