#!/usr/bin/env python3
"""The deployment rules of docs/operations.md, checked on rendered manifests (scripts/check-deploy).

    deploy_rules.py RENDERED.yaml SETTINGS.txt     # check; one PASS/FAIL line per rule
    deploy_rules.py --self-test RENDERED.yaml SETTINGS.txt

SETTINGS.txt is what `profile-gateway check-config` printed for the ConfigMap's TOML (defaults
included), so the grace-period rule uses the values the pods will run with. --self-test breaks
the manifests one way at a time and requires the matching rule to fail.
"""

import copy
import re
import sys

import yaml

APP = "profile-gateway"
MARGIN_S = 5


def setting(settings_text, name):
    m = re.search(r"\b%s: (\d+)," % re.escape(name), settings_text)
    if not m:
        raise SystemExit("check-config output has no %s" % name)
    return int(m.group(1))


def find(docs, kind, name=None):
    return [d for d in docs if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs, kind, name):
    found = find(docs, kind, name)
    if len(found) != 1:
        raise AssertionError("expected one %s/%s, found %d" % (kind, name, len(found)))
    return found[0]


def pod_templates(docs):
    for d in docs:
        if d.get("kind") in ("Deployment", "Job"):
            yield d, d["spec"]["template"]["spec"]


def cpu_cores(v):
    v = str(v)
    return float(v[:-1]) / 1000 if v.endswith("m") else float(v)


def rules(docs, settings_text):
    """(name, check) pairs; a check raises AssertionError with the reason."""
    checks = []

    def rule(name):
        def register(f):
            checks.append((name, f))
            return f
        return register

    @rule("every pod runs as a fixed non-root uid/gid with RuntimeDefault seccomp")
    def _():
        for d, spec in pod_templates(docs):
            sc = spec.get("securityContext", {})
            assert sc.get("runAsNonRoot") is True, d["metadata"]["name"]
            assert isinstance(sc.get("runAsUser"), int) and sc["runAsUser"] > 0, d["metadata"]["name"]
            assert isinstance(sc.get("runAsGroup"), int) and sc["runAsGroup"] > 0, d["metadata"]["name"]
            assert sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", d["metadata"]["name"]

    @rule("every container: no privilege escalation, read-only root, all capabilities dropped")
    def _():
        for d, spec in pod_templates(docs):
            for c in spec.get("initContainers", []) + spec["containers"]:
                sc = c.get("securityContext", {})
                where = "%s/%s" % (d["metadata"]["name"], c["name"])
                assert sc.get("allowPrivilegeEscalation") is False, where
                assert sc.get("readOnlyRootFilesystem") is True, where
                assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
                assert not sc.get("capabilities", {}).get("add"), where
                assert sc.get("privileged") in (None, False), where

    @rule("no automounted service account token")
    def _():
        for d, spec in pod_templates(docs):
            assert spec.get("automountServiceAccountToken") is False, d["metadata"]["name"]
        for sa in find(docs, "ServiceAccount"):
            assert sa.get("automountServiceAccountToken") is False, sa["metadata"]["name"]

    @rule("no secret in the environment (Secrets are mounted files)")
    def _():
        for d, spec in pod_templates(docs):
            for c in spec["containers"]:
                for e in c.get("env", []):
                    assert "secretKeyRef" not in e.get("valueFrom", {}), (c["name"], e["name"])
                    assert not re.match(r"(DATABASE_URL|PROFILE_GATEWAY__)", e["name"]), e["name"]
                for e in c.get("envFrom", []):
                    assert "secretRef" not in e, c["name"]

    @rule("the namespace enforces Pod Security restricted")
    def _():
        ns = find(docs, "Namespace")
        assert ns, "no Namespace"
        for n in ns:
            assert n["metadata"]["labels"].get("pod-security.kubernetes.io/enforce") == "restricted"

    def gateway():
        dep = one(docs, "Deployment", APP)
        spec = dep["spec"]["template"]["spec"]
        return dep, spec, next(c for c in spec["containers"] if c["name"] == "gateway")

    @rule("probes: startup and liveness on /health/live, readiness on /health/ready, API port")
    def _():
        _, _, c = gateway()
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports.get("http") == 8080 and ports.get("metrics") == 9090, ports
        for probe, path in (("startupProbe", "/health/live"), ("livenessProbe", "/health/live"),
                            ("readinessProbe", "/health/ready")):
            get = c[probe]["httpGet"]
            assert get["path"] == path and get["port"] in ("http", 8080), (probe, get)

    @rule("probe thresholds match the lifecycle (readiness fails within the shutdown delay)")
    def _():
        _, _, c = gateway()
        delay_s = setting(settings_text, "shutdown_delay_ms") / 1000
        r = c["readinessProbe"]
        seen_after = r.get("periodSeconds", 10) * r.get("failureThreshold", 3) + r.get("timeoutSeconds", 1)
        assert seen_after <= delay_s, "readiness notices a drain after %ss > delay %ss" % (seen_after, delay_s)
        live = c["livenessProbe"]
        assert live.get("periodSeconds", 10) * live.get("failureThreshold", 3) >= 20, "liveness too eager"
        start = c["startupProbe"]
        assert start.get("periodSeconds", 10) * start.get("failureThreshold", 3) >= 20, "startup too short"

    @rule("terminationGracePeriodSeconds >= preStop + shutdown delay + request deadline + grace + margin")
    def _():
        _, spec, c = gateway()
        sleep = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        need = (sleep
                + setting(settings_text, "shutdown_delay_ms") / 1000
                + setting(settings_text, "request_deadline_ms") / 1000
                + setting(settings_text, "shutdown_grace_ms") / 1000
                + MARGIN_S)
        have = spec.get("terminationGracePeriodSeconds", 30)
        assert have >= need, "terminationGracePeriodSeconds %s < %s" % (have, need)

    @rule("preStop is a sleep action (the image has no shell)")
    def _():
        _, _, c = gateway()
        pre = c["lifecycle"]["preStop"]
        assert list(pre) == ["sleep"], pre

    @rule("resources: requests set; CPU limit absent or at least one core")
    def _():
        for d, spec in pod_templates(docs):
            for c in spec["containers"]:
                res = c.get("resources", {})
                assert {"cpu", "memory"} <= set(res.get("requests", {})), c["name"]
                assert "memory" in res.get("limits", {}), c["name"]
                cpu = res.get("limits", {}).get("cpu")
                assert cpu is None or cpu_cores(cpu) >= 1, "CPU limit %s" % cpu

    @rule("the public Service exposes the API port only")
    def _():
        svc = one(docs, "Service", APP)
        assert [p["targetPort"] for p in svc["spec"]["ports"]] == ["http"], svc["spec"]["ports"]
        assert svc["spec"].get("type", "ClusterIP") == "ClusterIP"

    @rule("metrics: port 9090, path /metrics, scraped through its own Service")
    def _():
        svc = one(docs, "Service", APP + "-metrics")
        assert [p["port"] for p in svc["spec"]["ports"]] == [9090]
        for sm in find(docs, "ServiceMonitor"):
            want = sm["spec"]["selector"]["matchLabels"]
            assert all(svc["metadata"]["labels"].get(k) == v for k, v in want.items()), want
            assert [(e["port"], e["path"]) for e in sm["spec"]["endpoints"]] == [("metrics", "/metrics")]

    @rule("PodDisruptionBudget maxUnavailable 1")
    def _():
        assert one(docs, "PodDisruptionBudget", APP)["spec"] == {
            "maxUnavailable": 1,
            "selector": one(docs, "Deployment", APP)["spec"]["selector"],
        }

    @rule("HPA autoscaling/v2 on CPU, min >= 2, scale-down stabilization")
    def _():
        hpa = one(docs, "HorizontalPodAutoscaler", APP)
        assert hpa["apiVersion"] == "autoscaling/v2"
        s = hpa["spec"]
        assert s["minReplicas"] >= 2 and s["maxReplicas"] >= s["minReplicas"]
        assert [m["resource"]["name"] for m in s["metrics"] if m["type"] == "Resource"] == ["cpu"]
        assert s["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 60
        assert "replicas" not in one(docs, "Deployment", APP)["spec"], "the HPA owns replicas"

    @rule("NetworkPolicy: default deny; API from caller namespaces; metrics from monitoring only")
    def _():
        deny = one(docs, "NetworkPolicy", "default-deny")["spec"]
        assert deny["podSelector"] == {} and sorted(deny["policyTypes"]) == ["Egress", "Ingress"]
        assert "ingress" not in deny and "egress" not in deny
        np = one(docs, "NetworkPolicy", APP)["spec"]
        by_port = {}
        for r in np["ingress"]:
            for p in r["ports"]:
                by_port.setdefault(p["port"], []).extend(r["from"])
        assert set(by_port) == {"http", "metrics"}, by_port
        assert by_port["metrics"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
        assert all("namespaceSelector" in f and "podSelector" not in f for f in by_port["http"])
        egress_ports = {p["port"] for r in np["egress"] for p in r["ports"]}
        assert egress_ports == {53, 5432, 443, 4318}, egress_ports

    @rule("migration Job: migrate with the owner role's Secret, bounded retries, deadline, TTL")
    def _():
        job = one(docs, "Job", APP + "-migrate")
        s = job["spec"]
        assert s["backoffLimit"] >= 1 and s["activeDeadlineSeconds"] > 0 and s["ttlSecondsAfterFinished"] > 0
        pod = s["template"]["spec"]
        assert pod["restartPolicy"] == "Never"
        assert pod["containers"][0]["args"][-1] == "migrate"
        job_secrets = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
        app_secrets = {v["secret"]["secretName"] for v in gateway()[1]["volumes"] if "secret" in v}
        assert job_secrets and not job_secrets & app_secrets, (job_secrets, app_secrets)

    return checks


def run(docs, settings_text, quiet=False):
    failed = []
    for name, check in rules(docs, settings_text):
        try:
            check()
            if not quiet:
                print("PASS: %s" % name)
        except (AssertionError, KeyError, StopIteration, TypeError) as e:
            failed.append(name)
            if not quiet:
                print("FAIL: %s: %r" % (name, e))
    return failed


def breakages():
    """(rule that must fail, how to break the manifests)."""
    def gw(docs):
        return next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]

    def set_(f):
        return f

    return [
        ("terminationGracePeriodSeconds", set_(lambda d: gw(d).__setitem__("terminationGracePeriodSeconds", 30))),
        ("every container", set_(lambda d: gw(d)["containers"][0]["securityContext"].__setitem__("readOnlyRootFilesystem", False))),
        ("every pod runs", set_(lambda d: gw(d)["securityContext"].__setitem__("runAsUser", 0))),
        ("probe thresholds", set_(lambda d: gw(d)["containers"][0]["readinessProbe"].__setitem__("failureThreshold", 5))),
        ("probes:", set_(lambda d: gw(d)["containers"][0]["livenessProbe"]["httpGet"].__setitem__("path", "/health/ready"))),
        ("no secret in the environment", set_(lambda d: gw(d)["containers"][0]["env"].append(
            {"name": "DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": "x", "key": "y"}}}))),
        ("resources:", set_(lambda d: gw(d)["containers"][0]["resources"]["limits"].__setitem__("cpu", "500m"))),
        ("the public Service", set_(lambda d: next(x for x in d if x["kind"] == "Service")["spec"]["ports"].append(
            {"name": "metrics", "port": 9090, "targetPort": "metrics"}))),
        ("migration Job", set_(lambda d: next(x for x in d if x["kind"] == "Job")["spec"]["template"]["spec"]["volumes"][1]["secret"].__setitem__(
            "secretName", "profile-gateway-secrets"))),
        ("no automounted", set_(lambda d: gw(d).__setitem__("automountServiceAccountToken", True))),
    ]


def main(argv):
    self_test = argv[1:2] == ["--self-test"]
    if self_test:
        argv = argv[:1] + argv[2:]
    if len(argv) != 3:
        raise SystemExit(__doc__)
    docs = [d for d in yaml.safe_load_all(open(argv[1])) if d]
    settings_text = open(argv[2]).read()
    if not self_test:
        return 1 if run(docs, settings_text) else 0
    bad = 0
    for rule_prefix, breakage in breakages():
        broken = copy.deepcopy(docs)
        breakage(broken)
        failed = run(broken, settings_text, quiet=True)
        if any(f.startswith(rule_prefix) for f in failed):
            print("PASS: breaking the manifests fails rule '%s...'" % rule_prefix)
        else:
            bad += 1
            print("FAIL: a breakage went unnoticed by rule '%s...' (failed: %s)" % (rule_prefix, failed))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
