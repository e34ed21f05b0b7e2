"""Render a task definition for an image; register it in the local cloud."""
import argparse
import hashlib
import json
import os

args = argparse.ArgumentParser()
args.add_argument("--image", required=True)
opts = args.parse_args()
with open(os.environ["ATMOS_VARS_FILE"]) as fh:
    v = json.load(fh)
taskdef = {
    "family": v["service"],
    "containers": [{"name": v["service"], "image": opts.image,
                    "cpu": v["cpu"], "memory": v["memory"]}],
    "region": os.environ["CLOUD_REGION"],
}
text = json.dumps(taskdef, indent=2, sort_keys=True)
revision = hashlib.sha256(text.encode()).hexdigest()[:8]
cloud = os.path.join(os.environ["ATMOS_ROOT"], ".local-cloud", os.environ["ATMOS_TARGET"])
os.makedirs(os.path.join(cloud, "taskdefs"), exist_ok=True)
with open(os.path.join(cloud, "taskdefs", f"{v['service']}-{revision}.json"), "w") as fh:
    fh.write(text)
print(f"task definition {v['service']}:{revision} uses {opts.image}")
with open(os.environ["ATMOS_OUTPUTS"], "w") as fh:
    json.dump({"taskdef_arn": f"local:taskdef/{v['service']}:{revision}"}, fh)
