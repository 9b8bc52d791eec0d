//! Configuration errors: one test per error message. Every error names the key and the value.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ratewall_core::config::{Backend, ClockSource, FailMode, HeaderFormat, LimiterConfig};
use ratewall_core::Algorithm;

fn err(yaml: &str) -> String {
    LimiterConfig::from_yaml_str(yaml, &["engine"])
        .expect_err(yaml)
        .to_string()
}

fn ok(yaml: &str) -> LimiterConfig {
    LimiterConfig::from_yaml_str(yaml, &["engine"])
        .unwrap_or_else(|e| panic!("{yaml}: {e}"))
        .0
}

macro_rules! config_error {
    ($($name:ident: $yaml:expr => [$($needle:expr),+];)*) => {$(
        #[test]
        fn $name() {
            let e = err($yaml);
            $(assert!(e.contains($needle), "{:?} should contain {:?}", e, $needle);)+
        }
    )*};
}

config_error! {
    unknown_key_suggests_closest: "by_usr: 5/s" => ["by_usr", "did you mean \"by_user\""];
    unknown_key_without_suggestion: "zzz: 1" => ["unknown key \"zzz\""];
    wrong_type_rate_int: "by_user: 5" => ["by_user", "invalid type: integer `5`"];
    wrong_type_by_tool_list: "by_tool: [a, b]" => ["by_tool", "invalid type: sequence"];
    wrong_type_by_tool_value: "by_tool: {echo: 5}" => ["by_tool.echo", "invalid type: integer"];
    bad_rate_unit: "by_user: 5/fortnight" => ["by_user", "\"5/fortnight\"", "unknown unit"];
    bad_rate_two_years: "by_user: 5/2y" => ["by_user", "\"5/2y\"", "366 days"];
    bad_rate_zero: "by_tenant: 0/s" => ["by_tenant", "\"0/s\"", "at least 1"];
    bad_rate_fraction: "by_user: 1.5/s" => ["by_user", "invalid count"];
    bad_rate_underscore: "by_user: 1_000/m" => ["by_user", "invalid count"];
    bad_rate_absurd: "by_user: 4294967296/m" => ["by_user", "ceiling of 4294967295"];
    bad_rate_same_window: "by_user: 5/s;6/sec" => ["by_user", "share the window"];
    bad_tool_rate: "by_tool: {echo: 5/x}" => ["by_tool[\"echo\"]", "\"5/x\""];
    duplicate_tool_after_normalisation: "by_tool: {Echo: 5/s, ' echo ': 6/s}" => ["by_tool", "duplicate key after normalisation", "\"echo\""];
    blank_tool_name: "by_tool: {' ': 5/s}" => ["tool name is blank"];
    bad_algorithm: "algorithm: leaky" => ["algorithm", "\"leaky\"", "gcra"];
    bad_backend: "backend: reddis" => ["backend", "\"reddis\"", "\"memory\""];
    bad_fail_mode: "fail_mode: clsoed" => ["fail_mode", "\"clsoed\"", "\"closed\""];
    bad_headers: "headers: rfc" => ["headers", "\"rfc\"", "\"ietf\""];
    bad_clock: "clock: atomic" => ["clock", "\"atomic\""];
    redis_without_url: "backend: redis" => ["redis_url", "required"];
    redis_bad_scheme: "{backend: redis, redis_url: 'http://x'}" => ["redis_url", "http://x"];
    tls_without_rediss: "{backend: redis, redis_url: 'redis://x', redis_ssl_ca_certs: /ca.pem}" => ["redis_ssl_ca_certs", "rediss://"];
    cert_without_key: "{backend: redis, redis_url: 'rediss://x', redis_ssl_certfile: /c.pem}" => ["redis_ssl_certfile", "together"];
    bad_prefix: "redis_key_prefix: 'a{b}'" => ["redis_key_prefix", "a{b}"];
    bad_memory_max_keys: "memory_max_keys: 5" => ["memory_max_keys", "5 is outside"];
    bad_timeout: "redis_timeout_ms: 0" => ["redis_timeout_ms", "0 is outside"];
    negative_timeout: "redis_timeout_ms: -5" => ["redis_timeout_ms", "invalid value: integer `-5`"];
    gcra_finer_than_a_microsecond: "{algorithm: gcra, by_user: 1000001/s}" => ["by_user", "\"1000001/s\"", "gcra", "one per µs"];
    sliding_log_too_long: "{algorithm: sliding_window, by_tool: {echo: 1000001/h}}" => ["by_tool[\"echo\"]", "1000001", "sliding_window", "sliding_window_counter"];
    sliding_log_too_long_in_limits: "{algorithm: sliding_window, limits: [{name: k, descriptors: [a], rate: 5/s;2000000/d}]}" => ["limits[0].rate", "sliding_window"];
    descriptor_limit_unknown_field: "limits: [{name: k, descriptors: [api_key], rate: 5/s, extra: 1}]" => ["limits[0]", "unknown field `extra`"];
    descriptor_limit_bad_name: "limits: [{name: 'a b', descriptors: [k], rate: 5/s}]" => ["limits[0].name", "\"a b\""];
    descriptor_limit_reserved_name: "limits: [{name: user, descriptors: [k], rate: 5/s}]" => ["limits[0].name", "reserved"];
    descriptor_limit_duplicate_name: "limits: [{name: k, descriptors: [a], rate: 5/s}, {name: k, descriptors: [b], rate: 5/s}]" => ["limits[1].name", "duplicate"];
    descriptor_limit_no_descriptors: "limits: [{name: k, descriptors: [], rate: 5/s}]" => ["limits[0].descriptors", "at least one"];
    descriptor_limit_repeated_descriptor: "limits: [{name: k, descriptors: [a, a], rate: 5/s}]" => ["limits[0].descriptors[1]", "repeated"];
    descriptor_limit_bad_rate: "limits: [{name: k, descriptors: [a], rate: fast}]" => ["limits[0].rate", "\"fast\""];
    not_a_mapping: "[1, 2]" => ["expected a mapping"];
    invalid_yaml: "by_user: [" => ["not valid YAML"];
}

#[test]
fn invalid_json_names_the_problem() {
    let e = LimiterConfig::from_json_str("{\"by_user\": ", &[]).unwrap_err();
    assert!(e.to_string().contains("not valid JSON"), "{e}");
}

#[test]
fn peer_config_block_is_accepted_unchanged() {
    // The gateway's plugins/config.yaml block for cpex-rate-limiter, verbatim apart from the URL.
    let c = ok("
backend: redis
redis_url: redis://127.0.0.1:6379/0
redis_key_prefix: rl
algorithm: fixed_window
by_user: 30/m
by_user_per_server: null
by_tenant: 3000/m
by_tool: {}
fail_mode: open
");
    assert_eq!(c.backend, Backend::Redis);
    assert_eq!(c.fail_mode, FailMode::Open);
    assert_eq!(c.policy.algorithm(), Algorithm::FixedWindow);
    assert!(!c.policy.has_per_server());
}

#[test]
fn defaults() {
    let c = ok("{allow_empty: true}");
    assert_eq!(c.backend, Backend::Memory);
    assert_eq!(c.fail_mode, FailMode::Open);
    assert_eq!(c.headers, HeaderFormat::Legacy);
    assert_eq!(c.memory_max_keys, 1_000_000);
    assert_eq!(c.policy.prefix(), "rl");
    let c = ok("{by_user: 5/s, backend: redis, redis_url: 'redis://h:1'}");
    let r = c.redis.unwrap();
    assert_eq!(r.timeout_ms, 50);
    assert_eq!(r.clock, ClockSource::Server);
    assert!(r.check_hostname);
}

/// Production-size limits: u32::MAX counts, week, month and year windows, for every algorithm
/// that can enforce them exactly (all of them, within gcra's and sliding_window's bounds).
#[test]
fn production_size_limits_load() {
    for alg in ["fixed_window", "sliding_window_counter", "token_bucket"] {
        let c = ok(&format!(
            "{{algorithm: {alg}, by_user: '4294967295/y', by_tenant: '4294967295/s;1000000/w', by_tool: {{echo: '999999937/mo'}}}}"
        ));
        assert_eq!(c.policy.algorithm().name(), alg);
    }
    ok("{algorithm: sliding_window, by_user: '1000000/y', by_tenant: '5/w'}");
    ok("{algorithm: gcra, by_user: '1000000/s', by_tenant: '4294967295/y;4294967295/2h'}");
}

/// An empty or truncated file, `{}`, `null`, or a file with only backend settings never means
/// "no limits" silently: an error naming the problem, unless `allow_empty: true` says so.
#[test]
fn a_config_without_limits_is_an_error_unless_allowed() {
    for text in ["", "   \n", "{}", "~", "null", "# nothing but a comment\n"] {
        let e = err(text);
        assert!(e.contains("the configuration is empty"), "{text:?}: {e}");
        assert!(e.contains("allow_empty: true"), "{text:?}: {e}");
    }
    for text in [
        "backend: memory\nfail_mode: closed\n",
        "{by_tool: {}, limits: []}",
        "{backend: redis, redis_url: 'redis://h:1'}",
    ] {
        let e = err(text);
        assert!(e.contains("no limit is configured"), "{text:?}: {e}");
    }
    // A file cut before its first limit configures none.
    assert!(err("backend: memory\n").contains("no limit is configured"));
}

#[test]
fn allow_empty_runs_without_limits_deliberately() {
    let c = ok("{allow_empty: true, fail_mode: closed}");
    assert!(c.policy.is_empty());
    assert_eq!(c.effective()["allow_empty"], true);
    assert!(err("allow_empty: yes").contains("allow_empty"));
    // With limits it changes nothing.
    assert!(!ok("{allow_empty: true, by_user: 5/s}").policy.is_empty());
}

#[test]
fn duplicate_keys_are_errors_naming_the_key_and_line() {
    for (text, key, line) in [
        ("by_user: 5/s\nby_user: 6/s\n", "by_user", "line 2"),
        (
            "by_tool:\n  echo: 5/s\n  search: 1/m\n  echo: 6/s\n",
            "echo",
            "line 4",
        ),
        (
            "limits:\n  - name: a\n    descriptors: [k]\n    rate: 5/s\n    rate: 6/s\n",
            "rate",
            "line 5",
        ),
    ] {
        let e = err(text);
        assert!(
            e.contains(&format!("duplicate key \"{key}\"")),
            "{text}: {e}"
        );
        assert!(e.contains(line), "{text}: {e}");
    }
    // JSON too.
    let e = LimiterConfig::from_json_str(
        r#"{"by_user": "5/s", "by_tool": {"a": "1/s", "a": "2/s"}}"#,
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("duplicate key \"a\""), "{e}");
}

/// Hostile nesting is refused while parsing, naming the bound: 200 KB nested 100,000 deep, in
/// flow and block style, YAML and JSON. (Timing is not asserted here: see docs/CONFIG.md.)
#[test]
fn deep_nesting_is_refused_naming_the_bound() {
    let n = 100_000;
    for text in [
        format!("{}{}", "[".repeat(n), "]".repeat(n)),
        format!("{}1{}", "{a: ".repeat(n / 2), "}".repeat(n / 2)),
        format!("{}x\n", "- ".repeat(n)),
        format!("by_user: {}", "[".repeat(n)),
    ] {
        let e = err(&text);
        assert!(
            e.contains("nesting deeper than 72 levels"),
            "{}: {e}",
            &text[..20]
        );
    }
    let json = format!("{}{}", "[".repeat(n), "]".repeat(n));
    let e = LimiterConfig::from_json_str(&json, &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("nesting deeper than 72 levels"), "{e}");
    // 72 levels are fine (as far as nesting goes).
    let ok = format!("by_user: 5/s\nx: {}{}", "[".repeat(71), "]".repeat(71));
    assert!(err(&ok).contains("unknown key \"x\""));
}

#[test]
fn oversized_documents_are_refused_naming_the_bound() {
    let big = format!("by_user: 5/s\n#{}\n", "x".repeat(4 << 20));
    let e = err(&big);
    assert!(e.contains("4194304 bytes"), "{}", &e[..200.min(e.len())]);
}

#[test]
fn enum_values_are_trimmed_and_case_insensitive() {
    let c = ok("{algorithm: ' Token_Bucket ', fail_mode: CLOSED, headers: Both, by_user: 1/s}");
    assert_eq!(c.policy.algorithm(), Algorithm::TokenBucket);
    assert_eq!(c.fail_mode, FailMode::Closed);
    assert_eq!(c.headers, HeaderFormat::Both);
}

#[test]
fn packaging_keys_are_returned_not_interpreted() {
    let (_, extra) =
        LimiterConfig::from_yaml_str("{by_user: 5/s, engine: python}", &["engine"]).unwrap();
    assert_eq!(extra["engine"], "python");
}

#[test]
fn tool_names_use_unicode_lowercase_at_load_and_request_time() {
    let c = ok("by_tool: {'ÄPI': 5/s}");
    assert!(c.policy.has_tool("äpi"));
    let ctx = ratewall_core::config::RequestContext {
        tool: Some("  äPI "),
        ..Default::default()
    };
    assert_eq!(c.policy.plan(&ctx).unwrap().cells.len(), 1);
}

#[test]
fn effective_config_redacts_the_redis_password() {
    let c = ok("{by_user: 1/s, backend: redis, redis_url: 'redis://user:secret@h:6379/0'}");
    let eff = c.effective().to_string();
    assert!(!eff.contains("secret"), "{eff}");
    assert!(eff.contains("redis://***@h:6379/0"), "{eff}");
}
