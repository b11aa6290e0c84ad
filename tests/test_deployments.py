"""The deployment file names flows that load and parameters that those flows accept."""
import os

import yaml
from prefect.flows import load_flow_from_entrypoint
from prefect.schedules import Cron


def test_every_deployment_loads_and_validates_its_parameters():
    spec = yaml.safe_load(open("deployments/prefect.yaml"))
    assert {d["name"] for d in spec["deployments"]} == {"pipeline", "nightly"}
    for deployment in spec["deployments"]:
        flow = load_flow_from_entrypoint(deployment["entrypoint"])
        params = flow.validate_parameters(deployment["parameters"])
        assert params["config"].llm.provider == "local"
        for schedule in deployment.get("schedules", []):
            Cron(schedule["cron"], timezone=schedule["timezone"])
    assert os.path.isfile(spec["deployments"][0]["parameters"]["config"]["seeds"])
