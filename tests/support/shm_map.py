"""A local program that maps a moonring host buffer (GET /buffers/:id/ipc answer on argv[2]).

  python3 shm_map.py fill IPC_JSON VALUES_JSON   np.memmap the buffer and write the values
  python3 shm_map.py read IPC_JSON               Python mmap + np.frombuffer: print the values

Used by tests/multirank/shared-buffers.test.ts; the same three lines work in any program.
"""
import json
import mmap
import os
import sys

import numpy as np

cmd, ipc = sys.argv[1], json.loads(sys.argv[2])
dtype = np.dtype(ipc["dtype"])
shape = tuple(ipc["shape"])
if cmd == "fill":
    values = np.asarray(json.loads(sys.argv[3]), dtype=np.float64)
    a = np.memmap(ipc["path"], dtype=dtype, mode="r+", offset=ipc["offset"], shape=shape)
    a[...] = values.reshape(shape)
    a.flush()
    del a
    print("ok")
elif cmd == "read":
    fd = os.open(ipc["path"], os.O_RDONLY)
    try:
        # mmap offsets must be page-aligned: map from 0 and slice (moonring's offset is 0 today).
        m = mmap.mmap(fd, ipc["offset"] + ipc["bytes"], prot=mmap.PROT_READ)
    finally:
        os.close(fd)
    a = np.frombuffer(m, dtype=dtype, count=ipc["bytes"] // dtype.itemsize, offset=ipc["offset"]).reshape(shape)
    print(json.dumps(a.astype(np.float64).ravel().tolist()))
    del a
    m.close()
else:
    sys.exit(f"unknown command {cmd}")
