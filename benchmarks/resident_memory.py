"""Resident memory of loaded .dsz models: tensor bytes against the file's payload, and RSS added per copy
over COPIES loaded copies in one process (before and after glibc's malloc_trim hands load-time scratch back).
Mode: `resident` (deepshrink.load as it is), `decode` (float weights), `frozen` (deepshrink.load(frozen=True)).

    python benchmarks/resident_memory.py MODEL.dsz [COPIES] [resident|decode|frozen] > benchmarks/results/resident_memory_NAME.json
"""
import gc, json, sys, os
import torch
import deepshrink
from deepshrink.nn import tensor_nbytes
from deepshrink.packing.format import read_container

path = sys.argv[1]
copies = int(sys.argv[2]) if len(sys.argv) > 2 else 20
mode = sys.argv[3] if len(sys.argv) > 3 else "resident"
options = {"decode": mode == "decode", "frozen": mode == "frozen"}
torch.set_num_threads(1)
meta, blobs, file_bytes = read_container(path)
payload = sum(b.numel() * b.element_size() for b in blobs.values())
del meta, blobs

def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) * 1024

x = torch.randn(1, 3, 32, 32)
warm = deepshrink.load(path, **options)
with torch.no_grad():
    warm(x)
tensor_bytes = warm.nbytes if mode == "frozen" else tensor_nbytes(warm)
gc.collect()
import ctypes; ctypes.CDLL("libc.so.6").malloc_trim(0)
before = rss()
models = []
for _ in range(copies):
    m = deepshrink.load(path, **options)
    models.append(m)
gc.collect()
after = rss()
with torch.no_grad():
    for m in models:
        m(x)
gc.collect()
after_run = rss()
import ctypes
ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand glibc's free heap (load-time scratch) back: what the copies retain
after_trim = rss()
print(json.dumps({"file": path, "file_bytes": file_bytes, "payload_bytes": payload,
                  "tensor_bytes": tensor_bytes, "tensor_over_payload": round(tensor_bytes / payload, 3),
                  "copies": copies, "rss_per_copy": (after - before) // copies,
                  "rss_per_copy_over_file": round((after - before) / copies / file_bytes, 3),
                  "rss_per_copy_after_forward": (after_run - before) // copies,
                  "rss_per_copy_after_malloc_trim": (after_trim - before) // copies, "mode": mode}))
