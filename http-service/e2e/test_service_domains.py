"""ratewall-server accepts the core's descriptor rules (`domains:`, envoyproxy/ratelimit documents):
`--check-config` shows them and rejects a bad rule naming the document and the path in it."""

import subprocess

import yaml

from service_harness import BIN

DOMAINS = """
domains:
  - domain: edge
    descriptors:
      - key: remote_address
        rate_limit: {unit: second, requests_per_unit: 10}
      - key: remote_address
        value: 203.0.113.9
        rate_limit: {rate: "1/s;20/h", algorithm: gcra}
  - domain: internal
    descriptors:
      - key: ldap
        rate_limit: {unlimited: true}
"""


def test_check_config_lists_domains(tmp):
    cfg = tmp / "domains.yaml"
    cfg.write_text(DOMAINS)
    r = subprocess.run([BIN, "--check-config", "--config", cfg], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    eff = yaml.safe_load(r.stdout)
    assert eff["domains"] == [
        {"domain": "edge", "origin": "domains[0]", "rules": 2},
        {"domain": "internal", "origin": "domains[1]", "rules": 1},
    ]


def test_check_config_rejects_bad_rules_naming_the_path(tmp):
    cfg = tmp / "bad.yaml"
    for text, needle in [
        ("domains:\n  - domain: edge\n    descriptors:\n      - key: k\n        rate_limit: {unit: fortnight, requests_per_unit: 1}\n",
         'domains[0].descriptors[0].rate_limit.unit: invalid rate limit unit "fortnight"'),
        ("domains:\n  - domain: a\n  - domain: a\n", 'duplicate domain "a": defined in domains[0] and again in domains[1]'),
        ("domains:\n  - domain: a\n    descriptors:\n      - key: k\n        ratelimit: {}\n", "unknown field `ratelimit`"),
    ]:
        cfg.write_text(text)
        r = subprocess.run([BIN, "--check-config", "--config", cfg], capture_output=True, text=True, timeout=20)
        assert r.returncode != 0, text
        assert needle in r.stderr, (text, r.stderr)
