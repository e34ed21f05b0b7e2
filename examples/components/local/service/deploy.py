"""Deploy a service: point it at a task definition with N replicas."""
import argparse
import json
import os

args = argparse.ArgumentParser()
args.add_argument("--taskdef", required=True)
opts = args.parse_args()
with open(os.environ["ATMOS_VARS_FILE"]) as fh:
    v = json.load(fh)
cloud = os.path.join(os.environ["ATMOS_ROOT"], ".local-cloud", os.environ["ATMOS_TARGET"])
os.makedirs(os.path.join(cloud, "services"), exist_ok=True)
service = {"name": v["service"], "taskdef": opts.taskdef, "replicas": v["replicas"],
           "health_check": v["health_check"]}
with open(os.path.join(cloud, "services", f"{v['service']}.json"), "w") as fh:
    json.dump(service, fh, indent=2, sort_keys=True)
url = f"http://{v['service']}.{os.environ['ATMOS_TARGET']}.local"
print(f"deployed {v['service']} ({v['replicas']} replicas) -> {opts.taskdef}")
with open(os.environ["ATMOS_OUTPUTS"], "w") as fh:
    json.dump({"service_url": url}, fh)
