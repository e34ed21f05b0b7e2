"""Tag an image by the content of the current directory (no registry, no
docker): outputs {image: REPOSITORY:TAG, tag}. The same source gives the same
tag, so a re-run after an unrelated change leaves its dependents cached."""
import hashlib
import json
import os
import sys

repository = sys.argv[1]
h = hashlib.sha256()
for base, dirs, files in os.walk("."):
    dirs[:] = sorted(d for d in dirs if d != ".atmos")
    for name in sorted(files):
        path = os.path.join(base, name)
        h.update(os.path.relpath(path, ".").encode() + b"\0")
        with open(path, "rb") as fh:
            h.update(fh.read())
tag = h.hexdigest()[:12]
print(f"tagged {repository}:{tag}")
with open(os.environ["ATMOS_OUTPUTS"], "w") as fh:
    json.dump({"image": f"{repository}:{tag}", "tag": tag}, fh)
