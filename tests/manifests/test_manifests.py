"""Every shipped kustomization renders and validates offline, broken variants are caught, and
the rendered objects have the posture a platform team expects (restricted pods, read-only
least-privilege RBAC, explicit fail-closed picker, the agreed quotas)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from epp.cli import SUBCOMMANDS, build_parser, with_default_command
from epp.serve_config import ServeConfig
from tests.manifests.cel_rules import CelRunner, escape_property
from tests.manifests.conftest import FIXTURES, find, one
from tests.manifests.crossrefs import selector_matches
from tests.manifests.validate import MANIFESTS, Validator, kustomizations, render

TOP_LEVEL = [str(p.relative_to(MANIFESTS)) for p in kustomizations()]
WORKLOAD_RENDERS = ["overlays/envoy-gateway", "overlays/istio", "examples/envoy-gateway-demo", "examples/istio-demo",
                    "examples/minimal"]


def test_every_expected_kustomization_is_discovered() -> None:
    assert {"base", "overlays/envoy-gateway", "overlays/istio", "examples/envoy-gateway-demo", "examples/istio-demo",
            "examples/minimal", "cluster/envoy-gateway", "cluster/kuadrant"} <= set(TOP_LEVEL)


def test_minimal_example_is_picker_pool_gateway_and_route_only(rendered: Any) -> None:
    objects = rendered("examples/minimal")
    kinds = {o["kind"] for o in objects}
    # Custom resources only from the CRDs of docs/deploy.md steps 1-2: no Kuadrant, no Prometheus Operator.
    assert kinds == {"Gateway", "HTTPRoute", "InferencePool", "ServiceAccount", "Role", "RoleBinding", "ClusterRole",
                     "ClusterRoleBinding", "ConfigMap", "Service", "Deployment", "PodDisruptionBudget", "NetworkPolicy"}
    (route,) = find(objects, "HTTPRoute")
    assert route["spec"]["rules"][0]["backendRefs"][0]["name"] == one(objects, "InferencePool")["metadata"]["name"]


def test_an_own_kustomization_can_use_an_example_without_copying_it(
    needs_kubectl: None, tmp_path: Path
) -> None:
    """docs/deploy.md step 6: a kustomization anywhere lists the example by a relative path and sets the image."""
    example = os.path.relpath(MANIFESTS / "examples" / "minimal", tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources:\n- {example}\nimages:\n- name: epp\n  newName: registry.example.com/team/epp\n  newTag: 1.2.3\n"
    )
    objects = render(tmp_path)
    images = {c["image"] for o in find(objects, "Deployment") for c in o["spec"]["template"]["spec"]["containers"]}
    assert images == {"registry.example.com/team/epp:1.2.3"}


@pytest.mark.parametrize("relative", TOP_LEVEL)
def test_kustomization_validates(validator: Validator, rendered: Any, relative: str) -> None:
    report = validator.validate_objects(rendered(relative))
    assert report.objects > 0
    assert [str(p) for p in report.problems] == []


def test_crd_cel_rules_really_run(validator: Validator, rendered: Any) -> None:
    """The offline CEL evaluation is not vacuous: the pool, route and gateway rules execute."""
    report = validator.validate_objects(rendered("examples/istio-demo"))
    ran = " | ".join(report.cel.ran)
    assert "self.kind != 'Service' || has(self.port)" in ran  # InferencePool endpointPickerRef
    assert "p1.number==p2.number" in ran  # InferencePool unique targetPorts
    assert "duration(self.backendRequest)" in ran  # HTTPRoute timeouts
    assert "self.group == 'gateway.networking.k8s.io'" in ran  # Kuadrant targetRef
    assert not [r for r, why in report.cel.skipped.items() if "oldSelf" not in why]


BROKEN = {
    "bad-crd-field": "Additional properties are not allowed ('failMode' was unexpected)",
    "bad-cel-missing-port": "port is required when kind is 'Service'",
    "bad-cel-duplicate-ports": "port number must be unique",
    "dangling-route-ref": "backendRef InferencePool 'llm-pol' does not exist",
    "wrong-picker-port": "endpointPickerRef port 9003 is not a port of Service",
    "wrong-target-port": "targetPort 8080 is not a containerPort",
    "misspelt-policy-target": "target HTTPRoute 'llm-routes' does not exist",
    "bad-envoy-filter-config": 'has no field named "request_body_mod"',
    "bad-builtin-field": "'readOnlyRootFileSystem' was unexpected",
    "bad-picker-config": "refers to undefined plugin 'prefix-cache-scorer'",
    "bad-bbr-models": "unknown keys ['adapter']",
    "unknown-gateway-class": "GatewayClass 'envoy' is neither shipped",
    "dangling-bbr-backend": "Service llm/llm-bbr has no port 9005",
    "dangling-scrape-token": "bearer token Secret 'llm-pool-epp-metrics-token' does not exist",
}


def test_every_broken_fixture_is_listed() -> None:
    assert {p.name for p in FIXTURES.iterdir() if p.is_dir()} == set(BROKEN)


@pytest.mark.parametrize("fixture", sorted(BROKEN))
def test_broken_fixture_is_rejected(validator: Validator, fixture: str) -> None:
    problems = [str(p) for p in validator.validate_dir(FIXTURES / fixture).problems]
    assert any(BROKEN[fixture] in p for p in problems), problems


def _pod_specs(objects: Any) -> list[tuple[str, dict[str, Any]]]:
    return [(o["metadata"]["name"], o["spec"]["template"]["spec"]) for o in find(objects, "Deployment")]


@pytest.mark.parametrize("relative", WORKLOAD_RENDERS)
def test_pods_are_restricted(rendered: Any, relative: str) -> None:
    """Pod Security 'restricted' plus read-only root and bounded memory, for every workload."""
    for name, pod in _pod_specs(rendered(relative)):
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] > 0, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert not pod.get("hostNetwork") and not pod.get("hostPID"), name
        for container in pod["containers"]:
            ctx = container["securityContext"]
            assert ctx["readOnlyRootFilesystem"] is True and ctx["allowPrivilegeEscalation"] is False, name
            assert ctx["capabilities"] == {"drop": ["ALL"]}, name
            assert {"cpu", "memory"} <= container["resources"]["requests"].keys(), name
            assert "memory" in container["resources"]["limits"], name
            assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"]), name
            if container["args"][0] == "sim":  # `epp sim` defaults to loopback; pods are reached by IP
                assert "--host=0.0.0.0" in container["args"], name


def _rules(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {(g, r, v) for rule in role["rules"] for g in rule.get("apiGroups", [""]) for r in
            rule.get("resources", []) + rule.get("nonResourceURLs", []) for v in rule["verbs"]}


def test_picker_rbac_is_read_only_and_namespaced(rendered: Any) -> None:
    """Reads in its own namespace; cluster-wide only the two reviews /metrics auth needs (no object access)."""
    objects = rendered("base")
    reviewer = one(objects, "ClusterRole", "llm-pool-epp-auth-reviewer")
    assert _rules(reviewer) == {("authentication.k8s.io", "tokenreviews", "create"),
                                ("authorization.k8s.io", "subjectaccessreviews", "create")}
    bindings = find(objects, "ClusterRoleBinding")
    assert [(b["roleRef"]["name"], [s["name"] for s in b["subjects"]]) for b in bindings] == [
        ("llm-pool-epp-auth-reviewer", ["llm-pool-epp"])]
    assert {r["metadata"]["name"] for r in find(objects, "ClusterRole")} == {
        "llm-pool-epp-auth-reviewer", "llm-pool-epp-metrics-reader"}
    role = one(objects, "Role", "llm-pool-epp")
    granted = {(g, r): set(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    assert granted == {
        ("", "pods"): {"get", "list", "watch"},
        ("inference.networking.k8s.io", "inferencepools"): {"get", "list", "watch"},
        ("llm-d.ai", "inferenceobjectives"): {"get", "list", "watch"},
        ("inference.networking.x-k8s.io", "inferenceobjectives"): {"get", "list", "watch"},
        ("llm-d.ai", "inferencemodelrewrites"): {"get", "list", "watch"},
        ("inference.networking.x-k8s.io", "inferencemodelrewrites"): {"get", "list", "watch"},
    }


@pytest.mark.parametrize("relative", ["examples/envoy-gateway-demo", "examples/istio-demo"])
def test_metrics_are_scraped_with_a_token_allowed_only_to_read_them(rendered: Any, relative: str) -> None:
    """The picker runs with /metrics auth (epp's own flag parsing decides), may review tokens, and the
    ServiceMonitor sends the token of a ServiceAccount bound to nothing but ``get /metrics``."""
    objects = rendered(relative)
    (args,) = _container_args(objects)["serve"]
    assert ServeConfig.from_args(build_parser().parse_args(with_default_command(args))).metrics.auth
    picker_bindings = {b["roleRef"]["name"] for b in find(objects, "ClusterRoleBinding")
                       if {"kind": "ServiceAccount", "name": "llm-pool-epp", "namespace": "llm"} in b["subjects"]}
    assert picker_bindings == {"llm-pool-epp-auth-reviewer"}
    (endpoint,) = one(objects, "ServiceMonitor", "llm-pool-epp")["spec"]["endpoints"]
    credentials = endpoint["authorization"]["credentials"]
    secret = one(objects, "Secret", credentials["name"])
    assert secret["type"] == "kubernetes.io/service-account-token" and credentials["key"] == "token"
    scraper = secret["metadata"]["annotations"]["kubernetes.io/service-account.name"]
    granted = [_rules(one(objects, b["roleRef"]["kind"], b["roleRef"]["name"]))
               for b in find(objects, "ClusterRoleBinding") + find(objects, "RoleBinding")
               if {"kind": "ServiceAccount", "name": scraper, "namespace": "llm"} in b["subjects"]]
    assert granted == [{("", "/metrics", "get")}]


def test_leader_election_component(rendered: Any) -> None:
    objects = rendered("examples/istio-demo")
    deployment = one(objects, "Deployment", "llm-pool-epp")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert deployment["spec"]["replicas"] >= 2
    assert "--ha-enable-leader-election" in container["args"]
    # Standbys are alive but not ready: liveness must not need leadership.
    assert container["livenessProbe"]["grpc"]["service"] == "liveness"
    assert container["startupProbe"]["grpc"]["service"] == "liveness"
    assert container["readinessProbe"]["grpc"]["service"] == "readiness"
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == "100%"
    assert not find(objects, "PodDisruptionBudget", "llm-pool-epp")
    leases = [r for role in find(objects, "Role") for r in role["rules"] if "leases" in r["resources"]]
    assert leases == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]}]
    # Without the component: one replica, no lease access, the conformance health name.
    base = rendered("overlays/envoy-gateway")
    single = one(base, "Deployment", "llm-pool-epp")["spec"]["template"]["spec"]["containers"][0]
    assert "--ha-enable-leader-election" not in single["args"]
    assert single["livenessProbe"]["grpc"]["service"] == "inference-extension"
    assert not [r for role in find(base, "Role") for r in role["rules"] if "leases" in r["resources"]]


def test_pool_fails_closed_explicitly() -> None:
    text = (MANIFESTS / "base" / "inferencepool.yaml").read_text()
    assert "failureMode: FailClose" in text  # stated, not left to the CRD default


@pytest.mark.parametrize("relative", ["examples/envoy-gateway-demo", "examples/istio-demo"])
def test_everything_lands_in_one_namespace(rendered: Any, relative: str) -> None:
    cluster_scoped = {"GatewayClass", "ClusterRole", "ClusterRoleBinding", "Namespace"}
    for obj in rendered(relative):
        expected = None if obj["kind"] in cluster_scoped else "llm"
        assert obj["metadata"].get("namespace") == expected, obj["kind"]


QUOTAS = {  # tier: requests/min, requests/day, tokens/min, tokens/day (product decision)
    "free": (10, 100, 5_000, 50_000),
    "pro": (100, 5_000, 50_000, 500_000),
    "enterprise": (1_000, 50_000, 500_000, 5_000_000),
}


def _limits(policy: dict[str, Any], tier: str) -> tuple[int, int]:
    [limit] = [v for v in policy["spec"]["limits"].values() if v["when"] == [{"predicate": f'auth.identity.tier == "{tier}"'}]]
    assert limit["counters"] == [{"expression": "auth.identity.tenant"}]  # per tenant, not global
    windows = {r["window"]: r["limit"] for r in limit["rates"]}
    assert windows.keys() == {"1m", "24h"}
    return windows["1m"], windows["24h"]


@pytest.mark.parametrize("tier", sorted(QUOTAS))
def test_quotas_per_tier(rendered: Any, tier: str) -> None:
    objects = rendered("examples/envoy-gateway-demo")
    requests = _limits(one(objects, "RateLimitPolicy"), tier)
    tokens = _limits(one(objects, "TokenRateLimitPolicy"), tier)
    assert requests + tokens == QUOTAS[tier]


def test_selector_semantics() -> None:
    labels = {"a": "1", "b": "2"}
    assert selector_matches({"matchLabels": {"a": "1"}}, labels)
    assert not selector_matches({"matchLabels": {"a": "2"}}, labels)
    assert selector_matches({"matchExpressions": [{"key": "b", "operator": "In", "values": ["2", "3"]}]}, labels)
    assert not selector_matches({"matchExpressions": [{"key": "c", "operator": "Exists"}]}, labels)
    assert selector_matches({"matchExpressions": [{"key": "c", "operator": "DoesNotExist"}]}, labels)


def test_cel_property_escaping_follows_kubernetes() -> None:
    assert escape_property("namespace") == "__namespace__"
    assert escape_property("x-gateway") == "x__dash__gateway"
    assert escape_property("a.b/c") == "a__dot__b__slash__c"
    assert escape_property("plain_name") == "plain_name"
    # A rule that reads an escaped property sees the value.
    schema = {"type": "object", "properties": {"namespace": {"type": "string"}},
              "x-kubernetes-validations": [{"rule": "self.__namespace__ == 'ok'", "message": "bad ns"}]}
    runner = CelRunner()
    assert list(runner.check("x", {"namespace": "ok"}, schema)) == []
    assert [p.message for p in runner.check("x", {"namespace": "no"}, schema)] == ["<root>: bad ns"]


def test_components_are_not_rendered_alone() -> None:
    components = {"components/leader-election", "components/active-active", "components/routing", "overlays/kuadrant", "overlays/simulated", "observability"}
    assert not components & set(TOP_LEVEL)
    assert all((MANIFESTS / c / "kustomization.yaml").exists() for c in components)


def test_fixture_paths_point_at_real_kustomizations() -> None:
    for kustomization in FIXTURES.glob("*/kustomization.yaml"):
        for line in kustomization.read_text().splitlines():
            if line.startswith("resources:"):
                target = line.split("[", 1)[1].rstrip("]")
                assert (kustomization.parent / target / "kustomization.yaml").resolve().is_file(), kustomization
                assert Path(target).parts[-2] in {"overlays", "examples"}


def _container_args(objects: Any) -> dict[str, list[list[str]]]:
    """Container args per epp subcommand, with $(VAR) references expanded to placeholder values."""
    found: dict[str, list[list[str]]] = {}
    for _, pod in _pod_specs(objects):
        for container in pod["containers"]:
            args = [re.sub(r"\$\([A-Z_]+\)", "llm", a) for a in container["args"]]
            found.setdefault(args[0], []).append(args)
    return found


@pytest.mark.parametrize("subcommand", ["serve", "sim", "bbr"])
def test_container_args_parse_with_the_real_cli(rendered: Any, subcommand: str) -> None:
    """The manifests' flags are accepted by epp's own argument parser (no process is started)."""
    registered = {name for name, _, _ in SUBCOMMANDS}
    if subcommand not in registered:
        pytest.skip(f"`epp {subcommand}` is not in epp.cli.SUBCOMMANDS yet; its flags follow docs/deploy.md")
    arg_lists = _container_args(rendered("examples/istio-demo")).get(subcommand)
    assert arg_lists, f"no container runs epp {subcommand}"
    for args in arg_lists:
        try:
            parsed = build_parser().parse_args(with_default_command(args))
        except SystemExit as exit_:  # argparse reports bad flags by exiting
            pytest.fail(f"epp rejects {args}: exit {exit_.code}")
        assert parsed.command == subcommand


def test_active_active_component(needs_kubectl: None, tmp_path: Path) -> None:
    overlay = os.path.relpath(MANIFESTS / "overlays" / "envoy-gateway", tmp_path)
    component = os.path.relpath(MANIFESTS / "components" / "active-active", tmp_path)
    (tmp_path / "kustomization.yaml").write_text(f"resources: [{overlay}]\ncomponents: [{component}]\n")
    objects = render(tmp_path)
    deployment = one(objects, "Deployment", "llm-pool-epp")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert deployment["spec"]["replicas"] == 3
    assert "--workers=2" in container["args"] and container["resources"]["requests"]["cpu"] == "2"
    assert build_parser().parse_args(container["args"]).workers == 2  # the flag epp serve accepts
    assert "--ha-enable-leader-election" not in container["args"]  # every replica serves
    assert one(objects, "PodDisruptionBudget", "llm-pool-epp")["spec"]["maxUnavailable"] == 1
