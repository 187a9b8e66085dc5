"""The real operator process against the emulated API server: children, drift, status, bad specs, restarts.

The tests share one emulator and one operator process; each uses its own MiliDeployment. The restart
test runs last and also covers every object the earlier tests left behind.
"""

from __future__ import annotations

import uuid
from typing import Any


def container(deployment: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    """The pod template's container called ``name`` (the first one without a name)."""
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == name) if name else containers[0]


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def condition(md: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    for item in ((md or {}).get("status") or {}).get("conditions") or []:
        if item["type"] == kind:
            return item
    return {}


def events_about(api, name: str, reason: str) -> list[dict[str, Any]]:
    return [e for e in api.events() if e["involvedObject"]["name"] == name and e["reason"] == reason]


def test_milideployment_gets_a_deployment_and_service_it_owns(api, operator, wait_for):
    md = api.create_milideployment(
        "chat",
        {
            "model": {"source": "pvc://models/qwen3-0.6b", "servedName": "qwen3", "maxModelLen": 4096},
            "engine": {"maxNumSeqs": 64, "prefixCaching": False, "kernels": "cuda"},
            "resources": {"gpus": 1, "cpu": "4", "memory": "16Gi"},
            "apiKeySecretRef": {"name": "chat-api-key", "key": "token"},
            "service": {"port": 8080},
        },
    )
    uid = md["metadata"]["uid"]
    deployment = wait_for(lambda: api.get(api.deployment_path("chat")), "the worker Deployment")
    service = wait_for(lambda: api.get(api.service_path("chat")), "the worker Service")

    for child in (deployment, service):
        (owner,) = child["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
            "MiliDeployment",
            "chat",
            uid,
            True,
        )

    worker = container(deployment)
    args = worker["args"]
    assert worker["image"] == "mili-worker:test"
    assert flag(args, "--model") == "file:///models/qwen3-0.6b"
    assert (flag(args, "--served-name"), flag(args, "--max-model-len"), flag(args, "--max-num-seqs")) == (
        "qwen3",
        "4096",
        "64",
    )
    assert "--no-prefix-caching" in args and flag(args, "--kernels") == "cuda"
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {
        "name": "MILI_API_KEY",
        "valueFrom": {"secretKeyRef": {"name": "chat-api-key", "key": "token"}},
    } in worker["env"]
    pod = deployment["spec"]["template"]["spec"]
    assert {"name": "model", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}} in pod[
        "volumes"
    ]
    assert worker["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert deployment["spec"]["replicas"] == 1

    # The Service named after the MiliDeployment is the router's; the headless one names the workers.
    router = wait_for(lambda: api.get(api.deployment_path("chat-router")), "the router Deployment")
    router_pod_labels = router["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= router_pod_labels.items()
    workers = wait_for(lambda: api.get(api.service_path("chat-workers")), "the headless workers Service")
    assert workers["spec"]["clusterIP"] == "None"
    assert workers["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}
    ]

    status = wait_for(
        lambda: (
            (api.get(api.md_path("chat")) or {}).get("status", {}).get("endpoint")
            and api.get(api.md_path("chat"))["status"]
        ),
        "the MiliDeployment status",
    )
    assert status["endpoint"] == "http://chat.mili-test.svc:8080/v1"
    assert status["selector"] == "app.kubernetes.io/name=mili-worker,mili.dev/deployment=chat"
    assert status["desiredReplicas"] == 1
    wait_for(lambda: events_about(api, "chat", "Created"), "a Created Event")
    assert (
        'mili_operator_desired_replicas{mili_deployment="chat",namespace="mili-test"} 1.0'
        in operator.metrics()
    )


def test_the_router_discovers_the_workers_with_its_own_pod_reader_role(api, operator, wait_for):
    md = api.create_milideployment(
        "routed",
        {
            "resources": {"gpus": 0},
            "router": {"policy": "round_robin", "replicas": 2},
            "apiKeySecretRef": {"name": "routed-key", "key": "token"},
        },
    )
    router = wait_for(lambda: api.get(api.deployment_path("routed-router")), "the router Deployment")
    rbac = "/apis/rbac.authorization.k8s.io/v1/namespaces/mili-test"
    account = wait_for(
        lambda: api.get("/api/v1/namespaces/mili-test/serviceaccounts/routed-router"), "the ServiceAccount"
    )
    role = wait_for(lambda: api.get(f"{rbac}/roles/routed-router"), "the Role")
    binding = wait_for(lambda: api.get(f"{rbac}/rolebindings/routed-router"), "the RoleBinding")
    for child in (router, account, role, binding):
        (owner,) = child["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"]) == (
            "MiliDeployment",
            "routed",
            md["metadata"]["uid"],
        )
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "routed-router", "namespace": "mili-test"}
    ]
    pod = router["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "routed-router" and router["spec"]["replicas"] == 2
    args = container(router, "router")["args"]
    assert (
        flag(args, "--policy") == "round_robin" and flag(args, "--service-discovery-namespace") == "mili-test"
    )
    assert flag(args, "--api-key") == "$(MILI_API_KEY)"
    assert (
        container(router, "router")["image"] == container(router, "gateway")["image"] == "mili-router:0.1.0"
    )

    # Turned off: the router's children go and the Service selects the workers again.
    api.patch_spec("routed", {"router": {"enabled": False}})
    wait_for(lambda: api.get(api.deployment_path("routed-router")) is None, "the router Deployment to go")
    wait_for(lambda: api.get(f"{rbac}/roles/routed-router") is None, "the Role to go")
    workers = api.get(api.deployment_path("routed"))["spec"]["selector"]["matchLabels"]
    wait_for(
        lambda: api.get(api.service_path("routed"))["spec"]["selector"] == workers,
        "the Service to select the workers",
    )


def worker_pod(api, deployment: str, name: str, ip: str, ready: bool) -> dict[str, Any]:
    """A worker pod as the kubelet would report it (the emulator runs no kubelet)."""
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "mili-test",
            "uid": str(uuid.uuid4()),
            "resourceVersion": "1",
            "labels": {"app.kubernetes.io/name": "mili-worker", "mili.dev/deployment": deployment},
        },
        "spec": {"containers": [{"name": "worker", "image": "w"}]},
        "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": str(ready)}]},
    }
    response = api.http.post("/api/v1/namespaces/mili-test/pods", json=body)
    response.raise_for_status()
    return response.json()


def kv_event_sources(api, name: str) -> list[str]:
    router = api.get(api.deployment_path(f"{name}-router"))
    args = container(router, "router")["args"] if router else []
    return [args[i + 1] for i, arg in enumerate(args) if arg == "--kv-event-source"]


def test_a_kv_aware_router_follows_the_ready_worker_pods(api, operator, wait_for):
    api.create_milideployment("precise", {"resources": {"gpus": 0}, "router": {"policy": "kv_aware"}})
    workers = wait_for(lambda: api.get(api.deployment_path("precise")), "the worker Deployment")
    assert flag(container(workers)["args"], "--kv-events-endpoint") == "tcp://*:5557"
    assert flag(container(workers)["args"], "--kv-events-replay-endpoint") == "tcp://*:5558"
    router = wait_for(lambda: api.get(api.deployment_path("precise-router")), "the router Deployment")
    assert "--worker-urls" not in container(router, "router")["args"] and not kv_event_sources(api, "precise")

    worker_pod(api, "precise", "precise-a", "10.1.0.7", ready=True)
    worker_pod(api, "precise", "precise-b", "10.1.0.8", ready=False)
    worker_pod(api, "routed-elsewhere", "other-a", "10.1.0.9", ready=True)
    wait_for(
        lambda: kv_event_sources(api, "precise") == ["http://10.1.0.7:8000=tcp://10.1.0.7:5557"],
        "the router to subscribe to the one ready worker",
    )
    api.patch(
        "/api/v1/namespaces/mili-test/pods/precise-b",
        {"status": {"conditions": [{"type": "Ready", "status": "True"}]}},
    )
    wait_for(
        lambda: len(kv_event_sources(api, "precise")) == 2,
        "the router to subscribe to the worker that became ready",
    )
    policy = api.get("/apis/networking.k8s.io/v1/namespaces/mili-test/networkpolicies/precise")
    assert any(
        {"protocol": "TCP", "port": "kv-events"} in rule["ports"] for rule in policy["spec"]["ingress"]
    )


def test_spec_changes_are_followed_by_the_deployment(api, operator, wait_for):
    api.create_milideployment(
        "follow", {"resources": {"gpus": 0}, "nodeSelector": {"pool": "cpu"}, "engine": {"maxNumSeqs": 128}}
    )
    wait_for(lambda: api.get(api.deployment_path("follow")), "the worker Deployment")

    api.patch_spec("follow", {"replicas": 3, "nodeSelector": None, "engine": {"maxNumSeqs": 32}})

    def followed() -> dict[str, Any] | None:
        deployment = api.get(api.deployment_path("follow")) or {}
        args = container(deployment)["args"] if deployment else []
        done = deployment and deployment["spec"]["replicas"] == 3 and flag(args, "--max-num-seqs") == "32"
        return deployment if done else None

    deployment = followed() or wait_for(followed, "the Deployment to follow the new spec")
    assert "nodeSelector" not in deployment["spec"]["template"]["spec"], (
        "a field dropped from the spec must go"
    )
    wait_for(lambda: events_about(api, "follow", "Updated"), "an Updated Event")
    wait_for(
        lambda: api.get(api.md_path("follow"))["status"].get("observedGeneration") == 2,
        "observedGeneration 2",
    )


def test_a_deleted_deployment_comes_back(api, operator, wait_for):
    md = api.create_milideployment("phoenix", {"resources": {"gpus": 0}})
    wait_for(lambda: api.get(api.deployment_path("phoenix")), "the worker Deployment")

    api.delete(api.deployment_path("phoenix"))

    again = wait_for(lambda: api.get(api.deployment_path("phoenix")), "the Deployment to be recreated")
    assert again["metadata"]["ownerReferences"][0]["uid"] == md["metadata"]["uid"]


def test_child_deployment_status_updates_the_milideployment(api, operator, wait_for):
    api.create_milideployment("watched", {"resources": {"gpus": 0}, "replicas": 2})
    wait_for(lambda: api.get(api.deployment_path("watched")), "the worker Deployment")

    # What the Deployment controller would report once one pod passes its readiness probe.
    api.patch(
        api.deployment_path("watched") + "/status",
        {"status": {"replicas": 2, "updatedReplicas": 2, "readyReplicas": 1, "availableReplicas": 1}},
    )

    md = wait_for(
        lambda: (lambda md: md if condition(md, "Available").get("status") == "True" else None)(
            api.get(api.md_path("watched"))
        ),
        "Available=True",
    )
    assert (md["status"]["replicas"], md["status"]["readyReplicas"]) == (2, 1)
    assert condition(md, "Progressing")["status"] == "True"
    assert condition(md, "Available")["message"] == "1/2 replicas ready"
    wait_for(lambda: events_about(api, "watched", "MinimumReplicasAvailable"), "an Available Event")


def test_a_bad_spec_is_degraded_with_an_event_naming_the_field(api, operator, wait_for):
    api.create_milideployment("broken", {"model": {"source": "ftp://example.com/model"}})

    degraded = wait_for(
        lambda: (
            condition(api.get(api.md_path("broken")), "Degraded").get("status") == "True"
            and condition(api.get(api.md_path("broken")), "Degraded")
        ),
        "Degraded=True",
    )
    assert degraded["reason"] == "InvalidSpec"
    assert degraded["message"].startswith(
        "spec.model.source: model source 'ftp://example.com/model': unknown scheme"
    )
    (event,) = wait_for(lambda: events_about(api, "broken", "InvalidSpec"), "an InvalidSpec Event")
    assert event["type"] == "Warning" and "spec.model.source" in event["message"]
    assert api.get(api.deployment_path("broken")) is None
    assert operator.process is not None and operator.process.poll() is None, "no crash"
    errors = [
        line
        for line in operator.metrics().splitlines()
        if line.startswith("mili_operator_reconcile_errors_total")
    ]
    assert errors and float(errors[0].split()[-1]) >= 1

    api.patch_spec("broken", {"model": {"source": "builtin:smollm2-135m-instruct"}, "resources": {"gpus": 0}})
    wait_for(lambda: api.get(api.deployment_path("broken")), "the Deployment once the spec is fixed")
    wait_for(
        lambda: condition(api.get(api.md_path("broken")), "Degraded").get("status") == "False",
        "Degraded=False",
    )


def test_autoscaler_owned_replicas_survive_spec_updates(api, operator, wait_for):
    autoscaling = {"enabled": True, "minReplicas": 2, "maxReplicas": 6}
    api.create_milideployment("scaled", {"resources": {"gpus": 0}, "autoscaling": autoscaling})
    deployment = wait_for(lambda: api.get(api.deployment_path("scaled")), "the worker Deployment")
    assert deployment["spec"]["replicas"] == 2, "created at minReplicas"

    api.patch(api.deployment_path("scaled"), {"spec": {"replicas": 5}})  # the autoscaler's decision
    api.patch_spec("scaled", {"engine": {"maxNumSeqs": 16}, "replicas": 1})

    updated = wait_for(
        lambda: (lambda d: d if flag(container(d)["args"], "--max-num-seqs") == "16" else None)(
            api.get(api.deployment_path("scaled"))
        ),
        "the new engine flags",
    )
    assert updated["spec"]["replicas"] == 5


def test_a_restarted_operator_changes_nothing(api, cluster, operator, wait_for):
    api.create_milideployment("steady", {"resources": {"gpus": 0}})
    wait_for(lambda: api.get(api.service_path("steady")), "the worker Service")
    names = [item["metadata"]["name"] for item in api.get(api.md_path())["items"]]
    children = [(r, n) for n in names for r in ("apps/v1/deployments", "v1/services") if n != "broken"]
    for name in names:  # let every object settle first: nothing pending from the earlier tests
        wait_for(lambda name=name: condition(api.get(api.md_path(name)), "Degraded"), f"{name} status")
        if (api.get(api.md_path(name))["spec"].get("autoscaling") or {}).get("enabled"):
            wait_for(
                lambda name=name: condition(api.get(api.md_path(name)), "ScalingActive"),
                f"{name}'s first autoscaling round",
                timeout=60,  # the round waits on the reconcile lock while nine children are applied
            )
    before_children = {key: cluster.versions(*key) for key in children}
    before_status = {name: api.get(api.md_path(name))["status"] for name in names}
    before_specs = {name: api.get(api.md_path(name))["spec"] for name in names}
    log_start = len(operator.log())

    operator.stop()
    operator.start()

    def resumed() -> bool:
        log = operator.log()[log_start:]
        expected = [f"Reconciled mili-test/{name} after resume" for name in names]
        expected += [
            f"Reconciled mili-test/{name} after {kind} LISTED"
            for name in names
            if name != "broken"
            for kind in ("Deployment", "Service")
        ]
        return all(line in log for line in expected)

    # The children listed at start-up join one queued pass per object (see test_reconcile_queue.py).
    wait_for(resumed, "the restarted operator to reconcile every object and child", timeout=90)
    assert {key: cluster.versions(*key) for key in children} == before_children, "children were rewritten"
    assert {name: api.get(api.md_path(name))["status"] for name in names} == before_status
    assert {name: api.get(api.md_path(name))["spec"] for name in names} == before_specs
