"""Build a content-addressed image of the current directory into a registry.

The image is a reproducible tarball (sorted names, fixed mtimes and owners),
so the same source always gives the same tag: a re-run after an unrelated
change yields the same outputs and its dependents stay cached.
"""
import hashlib
import io
import json
import os
import sys
import tarfile

repository = sys.argv[1].removeprefix("file://")
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
    for base, dirs, files in os.walk("."):
        dirs[:] = sorted(d for d in dirs if d != ".atmos")
        for name in sorted(files):
            path = os.path.join(base, name)
            info = tar.gettarinfo(path, arcname=os.path.relpath(path, "."))
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            with open(path, "rb") as fh:
                tar.addfile(info, fh)
data = buf.getvalue()
tag = hashlib.sha256(data).hexdigest()[:12]
with open(os.path.join(repository, f"{tag}.tar"), "wb") as fh:
    fh.write(data)
image = f"{os.path.basename(repository)}:{tag}"
print(f"built {image} ({len(data)} bytes)")
with open(os.environ["ATMOS_OUTPUTS"], "w") as fh:
    json.dump({"image": image, "tag": tag}, fh)
