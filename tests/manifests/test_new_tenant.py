"""manifests/tools/new-tenant prints a Secret that the shipped AuthPolicy really accepts.

The AuthPolicy's CEL predicates are evaluated here against the Secret the tool prints, in the
shape Authorino exposes it (``auth.identity`` = the Secret, ``request.headers`` lowercased), so
a drift between the tool's labels/annotations and the policy fails the test.
"""

from __future__ import annotations

import runpy
import subprocess
import sys
from typing import Any

import cel
import kubernetes_validate
import pytest
import yaml

from tests.manifests.conftest import one
from tests.manifests.crossrefs import selector_matches
from tests.manifests.test_manifests import QUOTAS
from tests.manifests.validate import MANIFESTS

TOOL = MANIFESTS / "tools" / "new-tenant"
KEY = "sk-test-0123456789abcdefghijklmnop"


def run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True, timeout=30, check=False)


def make_secret(*args: str) -> dict[str, Any]:
    result = run_tool("--key", KEY, *args)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_help_explains_tiers() -> None:
    result = run_tool("--help")
    assert result.returncode == 0
    assert "--tenant" in result.stdout and "enterprise" in result.stdout and "5,000,000 tokens/day" in result.stdout


@pytest.mark.parametrize(
    "args",
    [("--tenant", "acme"), ("--tenant", "Acme!", "--tier", "free"), ("--tenant", "acme", "--tier", "gold"),
     ("--tenant", "acme", "--tier", "free", "--key", "short"), ("--tenant", "acme", "--tier", "free", "--models", "a b")],
)
def test_bad_input_is_refused(args: tuple[str, ...]) -> None:
    result = run_tool(*args)
    assert result.returncode == 2 and result.stdout == ""
    assert "error:" in result.stderr


def test_secret_is_valid_and_keys_are_random() -> None:
    secret = make_secret("--tenant", "acme", "--tier", "pro")
    kubernetes_validate.validate(secret, "1.32", strict=True)
    assert secret["metadata"]["namespace"] == "kuadrant-system"
    assert secret["stringData"] == {"api_key": KEY}
    first, second = (yaml.safe_load(run_tool("--tenant", "acme", "--tier", "pro").stdout) for _ in range(2))
    assert first["stringData"]["api_key"] != second["stringData"]["api_key"]
    assert first["metadata"]["name"] != second["metadata"]["name"]


def test_tool_quota_table_matches_policies() -> None:
    assert runpy.run_path(str(TOOL), run_name="new_tenant")["TIERS"] == QUOTAS


class AuthPolicyModel:
    """The shipped AuthPolicy's selector and CEL predicates, evaluated like Authorino would."""

    def __init__(self, policy: dict[str, Any]) -> None:
        rules = policy["spec"]["rules"]
        self.selector = rules["authentication"]["api-key"]["apiKey"]["selector"]
        self.predicates = [p["predicate"] for a in rules["authorization"].values() for p in a["patternMatching"]["patterns"]]
        self.properties = rules["response"]["success"]["filters"]["identity"]["json"]["properties"]

    def authenticates(self, secret: dict[str, Any]) -> bool:
        labels = secret["metadata"]["labels"]
        # Authorino only watches Secrets with its default label; the policy selects on its own.
        return labels.get("authorino.kuadrant.io/managed-by") == "authorino" and selector_matches(self.selector, labels)

    def authorizes(self, secret: dict[str, Any], headers: dict[str, str]) -> bool:
        context = {"auth": {"identity": secret}, "request": {"headers": headers}}
        return all(cel.evaluate(predicate, context) is True for predicate in self.predicates)

    def identity(self, secret: dict[str, Any]) -> dict[str, Any]:
        context = {"auth": {"identity": secret}}
        return {name: cel.evaluate(prop["expression"], context) for name, prop in self.properties.items()}


@pytest.fixture
def policy(rendered: Any) -> AuthPolicyModel:
    return AuthPolicyModel(one(rendered("examples/istio-demo"), "AuthPolicy"))


MODEL = {"x-gateway-model-name": "meta-llama/Llama-3.2-1B-Instruct"}


@pytest.mark.parametrize("tier", sorted(QUOTAS))
def test_tenant_secret_is_accepted_with_its_tier(policy: AuthPolicyModel, tier: str) -> None:
    secret = make_secret("--tenant", "acme", "--tier", tier)
    assert policy.authenticates(secret)
    assert policy.authorizes(secret, MODEL)
    assert policy.identity(secret) == {"tier": tier, "tenant": "acme"}


def test_model_allow_list(policy: AuthPolicyModel) -> None:
    secret = make_secret("--tenant", "acme", "--tier", "free", "--models", "meta-llama/Llama-3.2-1B-Instruct,llama-3-8b")
    assert policy.authorizes(secret, MODEL)
    assert policy.authorizes(secret, {"x-gateway-model-name": "llama-3-8b"})
    assert not policy.authorizes(secret, {"x-gateway-model-name": "llama-3"})  # no prefix matches
    assert not policy.authorizes(secret, {"x-gateway-model-name": "gpt-4o"})
    assert not policy.authorizes(secret, {})  # no model header: cannot prove access


def test_keys_without_tier_or_tenant_are_refused(policy: AuthPolicyModel) -> None:
    secret = make_secret("--tenant", "acme", "--tier", "free")
    for annotation in ("kuadrant.io/groups", "secret.kuadrant.io/user-id"):
        broken = yaml.safe_load(yaml.safe_dump(secret))
        del broken["metadata"]["annotations"][annotation]
        assert not policy.authorizes(broken, MODEL), annotation
    secret["metadata"]["annotations"]["kuadrant.io/groups"] = "gold"
    assert not policy.authorizes(secret, MODEL)
    secret["metadata"]["labels"].pop("epp/api-key")
    assert not policy.authenticates(secret)
