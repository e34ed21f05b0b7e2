"""Create the image registry of a service in the local cloud."""
import json
import os
import sys

service = sys.argv[1]
cloud = os.path.join(os.environ["ATMOS_ROOT"], ".local-cloud", os.environ["ATMOS_TARGET"])
registry = os.path.join(cloud, "registry", service)
os.makedirs(registry, exist_ok=True)
print(f"registry ready: {registry}")
with open(os.environ["ATMOS_OUTPUTS"], "w") as fh:
    json.dump({"repository_url": f"file://{registry}"}, fh)
