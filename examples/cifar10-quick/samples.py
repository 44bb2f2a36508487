"""Copies the first test image of each CIFAR-10 class out of the JPEG archive in ../shared/data,
as <class>.jpg, to try `singa predict` on image files:

    python3 examples/cifar10-quick/samples.py /tmp/cifar-samples
"""
import os
import sys
import tarfile

here = os.path.dirname(os.path.abspath(__file__))
archive = os.path.join(here, "../../../shared/data/cifar10-jpeg/cifar10_jpeg_q75.tar.gz")
out = sys.argv[1] if len(sys.argv) > 1 else "cifar-samples"
os.makedirs(out, exist_ok=True)
seen = set()
with tarfile.open(archive) as t:
    for m in t:
        parts = m.name.split("/")
        if not m.isfile() or "test" not in parts or parts[-2] in seen:
            continue
        seen.add(parts[-2])
        with open(os.path.join(out, parts[-2] + ".jpg"), "wb") as f:
            f.write(t.extractfile(m).read())
        if len(seen) == 10:
            break
print(f"wrote {len(seen)} images to {out}")
