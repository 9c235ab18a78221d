use std::collections::HashMap;

use super::*;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn load(text: &str, env: &HashMap<String, String>) -> Result<Config, ConfigError> {
    validate(&parse_toml(text)?, env)
}

const GOOD: &str = r#"
[server]
listen = "127.0.0.1:9000"
request_timeout = "30s"

[upstream]
connect_timeout = "2s"

[[providers]]
name = "openai"
kind = "openai"
base_url = "https://api.openai.com/v1/"
api_key_env = "OPENAI_API_KEY"

[[providers]]
name = "claude"
kind = "anthropic"
api_key_env = "ANTHROPIC_API_KEY"

[[routes]]
model = "smart"
targets = [ { provider = "openai", model = "gpt-4o" }, { provider = "claude", model = "claude-sonnet-4-5" } ]
"#;

#[test]
fn valid_config_resolves_everything() {
    let config = load(
        GOOD,
        &env(&[("OPENAI_API_KEY", "sk-o"), ("ANTHROPIC_API_KEY", "sk-a")]),
    )
    .unwrap();
    assert_eq!(
        config.server.listen,
        Some("127.0.0.1:9000".parse().unwrap())
    );
    assert_eq!(config.server.request_timeout, Duration::from_secs(30));
    assert_eq!(config.server.max_body_bytes, 10 * 1024 * 1024);
    assert_eq!(config.upstream.connect_timeout, Duration::from_secs(2));
    assert_eq!(config.providers[0].base_url, "https://api.openai.com/v1");
    assert_eq!(config.providers[1].base_url, "https://api.anthropic.com");
    assert_eq!(config.providers[1].wire, WireFormat::Anthropic);
    assert_eq!(
        config.providers[1].api_key.as_ref().unwrap().expose(),
        "sk-a"
    );
    assert_eq!(config.routes[0].targets[1].provider.name, "claude");
    assert!(config.server.master_key.is_none());
}

#[test]
fn unknown_keys_are_named() {
    let error = parse_toml("[server]\nlisten = \"127.0.0.1:1\"\nlisten_port = 3\n").unwrap_err();
    assert!(error.message.contains("listen_port"), "{error}");
    assert_eq!(error.key, "line 3");
    let error =
        parse_toml("[[providers]]\nname=\"a\"\nkind=\"openai\"\napi_key=\"sk\"\n").unwrap_err();
    assert!(error.message.contains("api_key"), "{error}");
}

#[test]
fn route_to_unknown_provider_is_named() {
    let text = GOOD.replace("provider = \"claude\"", "provider = \"claud\"");
    let error = load(
        &text,
        &env(&[("OPENAI_API_KEY", "sk-o"), ("ANTHROPIC_API_KEY", "sk-a")]),
    )
    .unwrap_err();
    assert_eq!(error.key, "routes[0].targets[1].provider");
    assert!(
        error.message.contains("unknown provider `claud`"),
        "{error}"
    );
    assert!(error.message.contains("openai, claude"), "{error}");
}

#[test]
fn missing_env_var_is_named() {
    let error = load(GOOD, &env(&[("OPENAI_API_KEY", "sk-o")])).unwrap_err();
    assert_eq!(error.key, "providers[1].api_key_env");
    assert!(
        error.message.contains("ANTHROPIC_API_KEY is not set"),
        "{error}"
    );

    let error = load("[server]\nmaster_key_env = \"MY_KEY\"\n", &env(&[])).unwrap_err();
    assert_eq!(error.key, "server.master_key_env");
}

#[test]
fn bad_values_are_named() {
    let cases = [
        (
            "[[providers]]\nname=\"x\"\nkind=\"foo\"\n",
            "providers[0].kind",
        ),
        (
            "[[providers]]\nname=\"a/b\"\nkind=\"openai\"\n",
            "providers[0].name",
        ),
        (
            "[[providers]]\nname=\"x\"\nkind=\"openai\"\nbase_url=\"ftp://x\"\n",
            "providers[0].base_url",
        ),
        (
            "[[providers]]\nname=\"x\"\nkind=\"azure\"\napi_key_env=\"K\"\n",
            "providers[0].base_url",
        ),
        (
            "[[providers]]\nname=\"x\"\nkind=\"groq\"\n",
            "providers[0].api_key_env",
        ),
        (
            "[[providers]]\nname=\"x\"\nkind=\"openai\"\n[[providers]]\nname=\"x\"\nkind=\"openai\"\n",
            "providers[1].name",
        ),
        ("[[routes]]\nmodel=\"r\"\n", "routes[0].targets"),
        ("[server]\nlisten=\"nowhere\"\n", "server.listen"),
        ("[server]\nmax_body_bytes=10\n", "server.max_body_bytes"),
        ("[upstream]\nidle_timeout=\"0s\"\n", "upstream.idle_timeout"),
    ];
    for (text, key) in cases {
        let error = load(text, &env(&[("K", "k")])).unwrap_err();
        assert_eq!(error.key, key, "for {text}: {error}");
    }
}

#[test]
fn discovery_uses_sdk_variable_names() {
    let found = discover(&env(&[
        ("OPENAI_API_KEY", "sk-o"),
        ("OPENAI_BASE_URL", "http://127.0.0.1:1/v1"),
        ("GEMINI_BASE_URL", "http://127.0.0.1:2"),
        ("GROQ_API_KEY", "gsk"),
        ("OLLAMA_BASE_URL", "http://127.0.0.1:11434"),
    ]));
    let names: Vec<&str> = found.providers.iter().map(|p| p.name.as_str()).collect();
    // Gemini's base URL alone, without a key, is ignored; Ollama needs no key.
    assert_eq!(names, ["openai", "groq", "ollama"]);
    assert_eq!(
        found.providers[0].base_url.as_deref(),
        Some("http://127.0.0.1:1/v1")
    );
    assert_eq!(
        found.providers[2].base_url.as_deref(),
        Some("http://127.0.0.1:11434/v1")
    );
    let config = validate(
        &found,
        &env(&[("OPENAI_API_KEY", "sk-o"), ("GROQ_API_KEY", "gsk")]),
    )
    .unwrap();
    assert_eq!(
        config.providers[1].base_url,
        "https://api.groq.com/openai/v1"
    );
    assert!(config.providers[2].api_key.is_none());
    // OPENAI_BASE_URL still means OpenAI's API (through another host): bare `gpt-*` names
    // keep reaching it.
    assert!(config.providers[0].serves("gpt-4o-mini"));
}

#[test]
fn preset_models_apply_only_at_the_preset_url() {
    let text = r#"
[[providers]]
name = "openai"
kind = "openai"
api_key_env = "K"

[[providers]]
name = "same-url"
kind = "openai"
base_url = "https://api.openai.com/v1/"
api_key_env = "K"

[[providers]]
name = "vllm"
kind = "openai"
base_url = "http://10.0.0.5:8000/v1"

[[providers]]
name = "vllm-listed"
kind = "openai"
base_url = "http://10.0.0.6:8000/v1"
models = ["meta-llama/*"]

[[providers]]
name = "groq-proxy"
kind = "groq"
base_url = "https://proxy.example/groq/v1"
api_key_env = "K"
"#;
    let config = load(text, &env(&[("K", "k")])).unwrap();
    let serves = |name: &str, model: &str| {
        config
            .providers
            .iter()
            .find(|provider| provider.name == name)
            .unwrap()
            .serves(model)
    };
    assert!(serves("openai", "gpt-4o"));
    assert!(serves("same-url", "gpt-4o"));
    assert!(!serves("vllm", "gpt-4o"));
    assert!(config.providers[2].models.is_empty());
    assert!(!serves("vllm-listed", "gpt-4o"));
    assert!(serves("vllm-listed", "meta-llama/Llama-3.1-8B"));
    assert!(!serves("groq-proxy", "llama-3.3-70b"));
}

#[test]
fn exposure_needs_a_master_key() {
    let open: SocketAddr = "0.0.0.0:8080".parse().unwrap();
    let loopback: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    assert!(check_exposure(open, None).is_err());
    assert!(check_exposure(loopback, None).is_ok());
    assert!(check_exposure(open, Some(&Secret::new("k"))).is_ok());
    assert!(check_exposure("[::1]:1".parse().unwrap(), None).is_ok());
}

#[test]
fn secrets_do_not_leak_through_debug() {
    let config = load(
        GOOD,
        &env(&[
            ("OPENAI_API_KEY", "sk-secret-o"),
            ("ANTHROPIC_API_KEY", "sk-a"),
        ]),
    )
    .unwrap();
    let debug = format!("{config:?}");
    assert!(!debug.contains("sk-secret-o"));
}

#[test]
fn glob_matching() {
    assert!(glob_match("gpt-*", "gpt-4o"));
    assert!(glob_match("*", "anything"));
    assert!(glob_match("o1", "o1"));
    assert!(!glob_match("o1", "o1-mini"));
    assert!(glob_match("a*b*c", "axxbyyc"));
    assert!(!glob_match("a*b*c", "axxbyy"));
    assert!(glob_match(
        "accounts/fireworks/models/*",
        "accounts/fireworks/models/llama"
    ));
    assert!(!glob_match("claude-*", "gpt-4o"));
}

#[test]
fn storage_and_analytics_defaults_and_overrides() {
    let config = load("", &env(&[])).unwrap();
    assert_eq!(
        config.storage.data_dir.as_deref(),
        Some(std::path::Path::new(DEFAULT_DATA_DIR))
    );
    assert!(config.storage.postgres_url.is_none());
    assert_eq!(config.analytics.flush_interval, Duration::from_secs(1));
    assert!(config.analytics.request_log);
    assert_eq!(
        config.analytics.request_log_max_age,
        Duration::from_secs(7 * 86_400)
    );
    assert_eq!(config.analytics.request_log_max_bytes, 1024 * 1024 * 1024);
    assert_eq!(config.analytics.metrics_max_series, 1000);

    let from_env = load(
        "",
        &env(&[
            (DATA_DIR_ENV, ":memory:"),
            (POSTGRES_URL_ENV, "postgres://u@h/db"),
        ]),
    )
    .unwrap();
    assert!(
        from_env.storage.data_dir.is_none(),
        ":memory: keeps no files"
    );
    assert_eq!(
        from_env.storage.postgres_url.map(|s| s.expose().to_owned()),
        Some("postgres://u@h/db".to_owned())
    );
    let text = "[storage]\ndata_dir = \"/var/lib/sy\"\n[analytics]\nflush_interval = \"5s\"\nrequest_log = false\nrequest_log_max_age = \"1d\"\nrequest_log_max_mb = 10\nmetrics_max_series = 50\n";
    let configured = load(text, &env(&[(DATA_DIR_ENV, "/ignored")])).unwrap();
    assert_eq!(
        configured.storage.data_dir.as_deref(),
        Some(std::path::Path::new("/var/lib/sy")),
        "the config file wins over the environment default"
    );
    assert_eq!(configured.analytics.flush_interval, Duration::from_secs(5));
    assert!(!configured.analytics.request_log);
    assert_eq!(configured.analytics.request_log_max_bytes, 10 * 1024 * 1024);
    assert_eq!(configured.analytics.metrics_max_series, 50);
}

#[test]
fn bad_storage_and_analytics_values_are_named() {
    for (text, key) in [
        ("[storage]\ndata_dir = \" \"", "storage.data_dir"),
        (
            "[storage]\npostgres_url = \"mysql://x\"",
            "storage.postgres_url",
        ),
        (
            "[analytics]\nflush_interval = \"10ms\"",
            "analytics.flush_interval",
        ),
        (
            "[analytics]\nflush_interval = \"2m\"",
            "analytics.flush_interval",
        ),
        (
            "[analytics]\nrequest_log_max_age = \"5s\"",
            "analytics.request_log_max_age",
        ),
        (
            "[analytics]\nrequest_log_max_mb = 0",
            "analytics.request_log_max_mb",
        ),
        (
            "[analytics]\nmetrics_max_series = 0",
            "analytics.metrics_max_series",
        ),
        (
            "[analytics]\nmetrics_max_series = 100001",
            "analytics.metrics_max_series",
        ),
    ] {
        let error = load(text, &env(&[])).unwrap_err();
        assert_eq!(error.key, key, "{text}: {error}");
    }
    let unknown = load("[analytics]\nretention = \"1d\"", &env(&[])).unwrap_err();
    assert!(unknown.to_string().contains("retention"), "{unknown}");
}

#[test]
fn telemetry_is_off_unless_an_endpoint_is_named() {
    let config = load(
        GOOD,
        &env(&[("OPENAI_API_KEY", "o"), ("ANTHROPIC_API_KEY", "a")]),
    )
    .unwrap();
    assert_eq!(config.telemetry, None);
    // The other keys alone do not turn export on.
    let config = load("[telemetry]\nservice_name = \"edge\"\n", &env(&[])).unwrap();
    assert_eq!(config.telemetry, None);
}

#[test]
fn telemetry_from_the_file() {
    let config = load(
        "[telemetry]\notlp_endpoint = \"http://127.0.0.1:4318/\"\nservice_name = \" edge \"\nsample_ratio = 0.25\n",
        &env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://elsewhere:4318")]),
    )
    .unwrap();
    assert_eq!(
        config.telemetry,
        Some(TelemetryConfig {
            traces_endpoint: "http://127.0.0.1:4318/v1/traces".to_owned(),
            service_name: "edge".to_owned(),
            sample_ratio: 0.25,
        })
    );
    // A full traces URL is kept as it is.
    let config = load(
        "[telemetry]\notlp_endpoint = \"https://collector.example/otlp/v1/traces\"\n",
        &env(&[]),
    )
    .unwrap();
    let telemetry = config.telemetry.unwrap();
    assert_eq!(
        telemetry.traces_endpoint,
        "https://collector.example/otlp/v1/traces"
    );
    assert_eq!(telemetry.service_name, DEFAULT_SERVICE_NAME);
    assert_eq!(telemetry.sample_ratio, 1.0);
}

#[test]
fn telemetry_endpoint_from_the_standard_variable() {
    let environment = env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")]);
    let config = load("", &environment).unwrap();
    assert_eq!(
        config.telemetry.unwrap().traces_endpoint,
        "http://127.0.0.1:4318/v1/traces"
    );
    // Without a file too: discovery leaves `[telemetry]` to validation.
    let config = validate(&discover(&environment), &environment).unwrap();
    assert!(config.telemetry.is_some());
    let error = load(
        "",
        &env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")]),
    )
    .unwrap_err();
    assert_eq!(error.key, "telemetry.otlp_endpoint");
    assert!(
        error.message.contains("from OTEL_EXPORTER_OTLP_ENDPOINT"),
        "{error}"
    );
}

#[test]
fn bad_telemetry_values_are_named() {
    let cases = [
        (
            "[telemetry]\notlp_endpoint = \"localhost:4318\"\n",
            "telemetry.otlp_endpoint",
        ),
        (
            "[telemetry]\notlp_endpoint = \"\"\n",
            "telemetry.otlp_endpoint",
        ),
        (
            "[telemetry]\notlp_endpoint = \"http://c:4318?x=1\"\n",
            "telemetry.otlp_endpoint",
        ),
        (
            "[telemetry]\nsample_ratio = 1.5\n",
            "telemetry.sample_ratio",
        ),
        (
            "[telemetry]\nsample_ratio = -0.1\n",
            "telemetry.sample_ratio",
        ),
        (
            "[telemetry]\nsample_ratio = nan\n",
            "telemetry.sample_ratio",
        ),
        (
            "[telemetry]\nservice_name = \" \"\n",
            "telemetry.service_name",
        ),
    ];
    for (text, key) in cases {
        let error = load(text, &env(&[])).unwrap_err();
        assert_eq!(error.key, key, "for {text}: {error}");
    }
    let error = parse_toml("[telemetry]\nendpoint = \"http://c:4318\"\n").unwrap_err();
    assert!(error.message.contains("endpoint"), "{error}");
}

#[test]
fn rate_limits_parse_with_defaults() {
    let text = format!(
        r#"{GOOD}
[rate_limits]
max_in_flight = 200
on_store_error = "fail_closed"

[[rate_limits.limits]]
scope = "key"
requests = 600
per = "1m"
burst = 50
queue = "2s"

[[rate_limits.limits]]
name = "tpm"
scope = "user"
tokens = 100000
per = "1m"
algorithm = "sliding_window"

[[rate_limits.limits]]
scope = "global"
concurrent = 32

[[rate_limits.limits]]
scope = "provider"
requests = 500
per = "1m"
only = ["openai"]
"#
    );
    let config = load(&text, &keys(&[])).unwrap();
    let limits = &config.rate_limits;
    assert_eq!(limits.on_store_error, FailMode::Closed);
    assert_eq!(limits.max_in_flight, Some(200));
    assert_eq!(limits.store_timeout, Duration::from_millis(100));
    assert_eq!(limits.user_header, "x-switchyard-user");
    assert_eq!(limits.limits.len(), 4);
    let rpm = &limits.limits[0];
    assert_eq!(rpm.name, "key-requests");
    assert_eq!(
        rpm.policy,
        crate::ratelimit::Policy::TokenBucket {
            interval: 100_000_000,
            burst: 50
        }
    );
    assert_eq!(rpm.queue, Duration::from_secs(2));
    assert_eq!(rpm.max_queued, 64);
    assert_eq!(limits.limits[1].unit, crate::ratelimit::Unit::Tokens);
    assert_eq!(
        limits.limits[2].policy,
        crate::ratelimit::Policy::Concurrency { limit: 32 }
    );
    assert!(limits.limits[3].applies_to("openai"));
    assert!(!limits.limits[3].applies_to("claude"));
    assert!(limits.is_active());
    assert!(!load(GOOD, &keys(&[])).unwrap().rate_limits.is_active());
}

#[test]
fn rate_limit_mistakes_are_named() {
    let cases = [
        (
            "scope = \"tenant\"\nrequests = 1\nper = \"1s\"",
            "rate_limits.limits[0].scope",
            "unknown scope",
        ),
        (
            "scope = \"key\"\nrequests = 1\ntokens = 5\nper = \"1s\"",
            "rate_limits.limits[0]",
            "exactly one",
        ),
        (
            "scope = \"key\"\nrequests = 10",
            "rate_limits.limits[0].per",
            "required",
        ),
        (
            "scope = \"key\"\nrequests = 0\nper = \"1s\"",
            "rate_limits.limits[0].requests",
            "at least 1",
        ),
        (
            "scope = \"key\"\nrequests = 5\nper = \"1s\"\nalgorithm = \"leaky\"",
            "rate_limits.limits[0].algorithm",
            "unknown algorithm",
        ),
        (
            "scope = \"key\"\nrequests = 5\nper = \"1s\"\nalgorithm = \"window_log\"\nburst = 3",
            "rate_limits.limits[0].burst",
            "only the token bucket",
        ),
        (
            "scope = \"key\"\nconcurrent = 5\nper = \"1s\"",
            "rate_limits.limits[0]",
            "no `per`",
        ),
        (
            "scope = \"provider\"\nrequests = 5\nper = \"1s\"\nonly = [\"nope\"]",
            "rate_limits.limits[0].only[0]",
            "unknown provider",
        ),
        (
            "scope = \"target\"\nrequests = 5\nper = \"1s\"\nonly = [\"nope/gpt-4o\"]",
            "rate_limits.limits[0].only[0]",
            "unknown provider `nope`",
        ),
        (
            "scope = \"key\"\nrequests = 5\nper = \"1s\"\nqueue = \"5m\"",
            "rate_limits.limits[0].queue",
            "at most 60s",
        ),
        (
            "scope = \"key\"\ntokens = 1000000\nper = \"1m\"\nalgorithm = \"window_log\"",
            "rate_limits.limits[0]",
            "window log",
        ),
    ];
    for (limit, key, message) in cases {
        let text = format!("{GOOD}\n[[rate_limits.limits]]\n{limit}\n");
        let error = load(&text, &keys(&[])).unwrap_err();
        assert_eq!(error.key, key, "{limit}: {error}");
        assert!(error.message.contains(message), "{limit}: {error}");
    }
    let twice = format!(
        "{GOOD}\n[[rate_limits.limits]]\nscope = \"key\"\nrequests = 1\nper = \"1s\"\n[[rate_limits.limits]]\nscope = \"key\"\nrequests = 2\nper = \"1m\"\n"
    );
    let error = load(&twice, &keys(&[])).unwrap_err();
    assert_eq!(error.key, "rate_limits.limits[1].name");
    let bad_mode = format!("{GOOD}\n[rate_limits]\non_store_error = \"maybe\"\n");
    assert_eq!(
        load(&bad_mode, &keys(&[])).unwrap_err().key,
        "rate_limits.on_store_error"
    );
}

#[test]
fn redis_url_from_config_or_environment() {
    let config = load(
        GOOD,
        &keys(&[("SWITCHYARD_REDIS_URL", "redis://127.0.0.1:6379/0")]),
    )
    .unwrap();
    assert_eq!(
        config.storage.redis_url.as_ref().map(Secret::expose),
        Some("redis://127.0.0.1:6379/0")
    );
    let text = format!("{GOOD}\n[storage]\nredis_url = \"http://nope\"\n");
    assert_eq!(
        load(&text, &keys(&[])).unwrap_err().key,
        "storage.redis_url"
    );
}

/// The provider keys `GOOD` needs, plus `extra`.
fn keys(extra: &[(&str, &str)]) -> HashMap<String, String> {
    let mut vars = env(&[("OPENAI_API_KEY", "sk-o"), ("ANTHROPIC_API_KEY", "sk-a")]);
    vars.extend(env(extra));
    vars
}

#[test]
fn cache_is_off_by_default_and_routes_inherit_or_override_it() {
    let config = load(GOOD, &keys(&[])).unwrap();
    assert!(!config.cache.any_enabled);
    assert_eq!(config.cache.max_bytes, 50 * 1024 * 1024);
    assert_eq!(config.cache.scope, CacheScope::Key);
    assert!(!config.routes[0].cache.enabled);

    let text = format!(
        "{GOOD}\n[routes.cache]\nttl = \"10m\"\nsampled = true\n\n[cache]\nenabled = true\nttl = \"2h\"\nmax_mb = 8\nscope = \"global\"\n"
    );
    let config = load(&text, &keys(&[])).unwrap();
    assert!(config.cache.any_enabled);
    assert_eq!(config.cache.default.ttl, Duration::from_secs(7200));
    assert_eq!(config.cache.max_bytes, 8 * 1024 * 1024);
    assert_eq!(config.cache.scope, CacheScope::Global);
    let route = &config.routes[0].cache;
    assert!(route.enabled, "inherited");
    assert_eq!(route.ttl, Duration::from_secs(600));
    assert!(route.sampled);
    assert!(!config.cache.redis, "no Redis configured");

    // One route can turn it on while the default stays off.
    let text = format!("{GOOD}\n[routes.cache]\nenabled = true\n");
    let config = load(&text, &keys(&[])).unwrap();
    assert!(config.cache.any_enabled && !config.cache.default.enabled);
}

#[test]
fn cache_errors_name_the_key() {
    for (extra, key) in [
        ("[cache]\nttl = \"0s\"\n", "cache.ttl"),
        ("[cache]\nmax_mb = 0\n", "cache.max_mb"),
        (
            "[cache]\nmax_mb = 1\nmax_entry_kb = 2048\n",
            "cache.max_entry_kb",
        ),
        ("[cache]\nscope = \"tenant\"\n", "cache.scope"),
        ("[cache]\nredis = true\n", "cache.redis"),
        ("[cache]\nlock_timeout = \"0s\"\n", "cache.lock_timeout"),
        ("[routes.cache]\nttl = \"400d\"\n", "routes[0].cache.ttl"),
    ] {
        let error = load(&format!("{GOOD}\n{extra}"), &keys(&[])).unwrap_err();
        assert_eq!(error.key, key, "{extra}");
    }
    let with_redis = load(
        &format!("{GOOD}\n[cache]\nenabled = true\n"),
        &keys(&[(REDIS_URL_ENV, "redis://127.0.0.1:6379")]),
    )
    .unwrap();
    assert!(with_redis.cache.redis, "Redis is used when configured");
}

#[test]
fn prices_come_from_the_catalog_targets_and_the_config_in_that_order() {
    let usage = crate::wire::TokenUsage {
        input: 1_000_000,
        output: 1_000_000,
        ..Default::default()
    };
    let config = load(GOOD, &keys(&[])).unwrap();
    assert_eq!(config.pricing.cost("openai", "gpt-4o", &usage), Some(12.5));
    assert_eq!(config.pricing.cost("openai", "gpt-made-up", &usage), None);

    let text = GOOD.replace(
        "{ provider = \"openai\", model = \"gpt-4o\" }",
        "{ provider = \"openai\", model = \"gpt-4o\", input_price = 1.0, output_price = 1.0 }",
    );
    let config = load(&text, &keys(&[])).unwrap();
    assert_eq!(
        config.pricing.cost("openai", "gpt-4o", &usage),
        Some(2.0),
        "target price"
    );

    let text = format!(
        "{text}\n[[prices]]\nprovider = \"openai\"\nmodel = \"gpt-4o\"\ninput = 3.0\noutput = 4.0\n\
         [[prices]]\nprovider = \"claude\"\nmodel = \"claude-next\"\ninput = 5.0\noutput = 6.0\ncached_input = 0.5\n"
    );
    let config = load(&text, &keys(&[])).unwrap();
    assert_eq!(
        config.pricing.cost("openai", "gpt-4o", &usage),
        Some(7.0),
        "[[prices]] win"
    );
    assert_eq!(
        config.pricing.cost("claude", "claude-next", &usage),
        Some(11.0)
    );
}

#[test]
fn price_errors_name_the_key() {
    for (extra, key) in [
        (
            "[[prices]]\nprovider = \"nobody\"\nmodel = \"m\"\ninput = 1.0\n",
            "prices[0].provider",
        ),
        (
            "[[prices]]\nprovider = \"openai\"\nmodel = \" \"\ninput = 1.0\n",
            "prices[0].model",
        ),
        (
            "[[prices]]\nprovider = \"openai\"\nmodel = \"m\"\ninput = -1.0\n",
            "prices[0].input",
        ),
        (
            "[[prices]]\nprovider = \"openai\"\nmodel = \"m\"\ninput = 1.0\ncache_write = nan\n",
            "prices[0].cache_write",
        ),
        (
            "[[prices]]\nprovider = \"openai\"\nmodel = \"m\"\ninput = 1.0\n[[prices]]\nprovider = \"openai\"\nmodel = \"m\"\ninput = 2.0\n",
            "prices[1]",
        ),
    ] {
        let error = load(&format!("{GOOD}\n{extra}"), &keys(&[])).unwrap_err();
        assert_eq!(error.key, key, "{extra}");
    }
}

#[test]
fn budget_mistakes_are_named() {
    let cases = [
        (
            "name = \"b\"\nscope = \"galaxy\"\namount_usd = 1.0",
            "budgets.limits[0].scope",
            "unknown scope",
        ),
        (
            "name = \"b\"\nscope = \"key\"\namount_usd = -1.0",
            "budgets.limits[0].amount_usd",
            "non-negative",
        ),
        (
            "name = \"b\"\nscope = \"key\"\namount_usd = 1.0\nperiod = \"hourly\"",
            "budgets.limits[0].period",
            "unknown period",
        ),
        (
            "name = \"b\"\nscope = \"key\"\namount_usd = 1.0\ntimezone = \"Mars/Olympus\"",
            "budgets.limits[0].timezone",
            "unknown time zone",
        ),
        (
            "name = \"b\"\nscope = \"key\"\namount_usd = 1.0\naction = \"downgrade\"",
            "budgets.limits[0].downgrade_to",
            "needs the route",
        ),
        (
            "name = \"b\"\nscope = \"key\"\namount_usd = 1.0\ndowngrade_to = \"nowhere\"",
            "budgets.limits[0].downgrade_to",
            "not a configured route",
        ),
        (
            "name = \"b\"\nscope = \"provider\"\namount_usd = 1.0\ndowngrade_to = \"smart\"",
            "budgets.limits[0].action",
            "cannot downgrade",
        ),
        (
            "name = \"key-budget\"\nscope = \"key\"\namount_usd = 1.0",
            "budgets.limits[0].name",
            "virtual keys' own budgets",
        ),
        (
            "name = \"b\"\nscope = \"key\"\namount_usd = 1.0\nthresholds = [0.5, 0]",
            "budgets.limits[0].thresholds",
            "above 0",
        ),
    ];
    for (budget, key, message) in cases {
        let text = format!("{GOOD}\n[[budgets.limits]]\n{budget}\n");
        let error = load(&text, &keys(&[])).unwrap_err();
        assert_eq!(error.key, key, "{budget}: {error}");
        assert!(error.message.contains(message), "{budget}: {error}");
    }
    let twice = format!(
        "{GOOD}\n[[budgets.limits]]\nname = \"b\"\nscope = \"key\"\namount_usd = 1.0\n\
         [[budgets.limits]]\nname = \"b\"\nscope = \"team\"\namount_usd = 2.0\n"
    );
    assert!(
        load(&twice, &keys(&[]))
            .unwrap_err()
            .message
            .contains("duplicate budget")
    );
    let good = format!(
        "{GOOD}\n[[routes]]\nmodel = \"cheap\"\ntargets = [{{ provider = \"openai\", model = \"gpt-4o-mini\" }}]\n\
         [budgets]\ntimezone = \"Europe/Berlin\"\nthresholds = [0.9, 0.5]\n\
         [[budgets.limits]]\nname = \"soft\"\nscope = \"route\"\nonly = [\"smart\"]\namount_usd = 5.0\n\
         period = \"weekly\"\ndowngrade_to = \"cheap\"\n"
    );
    let budgets = load(&good, &keys(&[])).unwrap().budgets;
    let rule = &budgets.rules[0];
    assert_eq!(rule.action, BudgetAction::Downgrade("cheap".to_owned()));
    assert_eq!(rule.thresholds, vec![0.5, 0.9], "sorted");
    assert_eq!(rule.timezone.iana_name(), Some("Europe/Berlin"));
    assert_eq!(rule.period, crate::budget::Period::Weekly);
    assert!(rule.covers("smart") && !rule.covers("cheap"));
}

#[test]
fn a_route_latency_objective_is_read_and_checked() {
    let with = |objective: &str| {
        format!(
            "{GOOD}\n[[routes]]\nmodel = \"cheapest\"\nstrategy = \"least-cost\"\n{objective}\n\
             targets = [{{ provider = \"openai\", model = \"gpt-4o-mini\" }}]\n"
        )
    };
    let config = load(&with("objective = { ttft_p95 = \"800ms\" }"), &keys(&[])).unwrap();
    let route = config.routes.iter().find(|r| r.name == "cheapest").unwrap();
    assert_eq!(
        route.objective.bound(true),
        Some(std::time::Duration::from_millis(800))
    );
    assert_eq!(route.objective.bound(false), None);
    for bad in ["objective = {}", "objective = { latency_p95 = \"0s\" }"] {
        let error = load(&with(bad), &keys(&[])).unwrap_err();
        assert_eq!(error.key, "routes[1].objective", "{bad}: {error}");
    }
}

#[test]
fn tier_mistakes_are_named() {
    let with = |route: &str| format!("{GOOD}\n[[routes]]\nmodel = \"tiered\"\n{route}\n");
    let cases = [
        ("tiers = [\"smart\"]", "routes[1].tiers", "at least two"),
        (
            "tiers = [\"smart\", \"nowhere\"]",
            "routes[1].tiers[1]",
            "unknown route",
        ),
        (
            "tiers = [\"smart\", \"tiered\"]",
            "routes[1].tiers[1]",
            "has tiers itself",
        ),
        (
            "tiers = [\"smart\", \"smart\"]\ntargets = [{ provider = \"openai\", model = \"gpt-4o\" }]",
            "routes[1].tiers",
            "either targets or tiers",
        ),
        (
            "tiers = [\"smart\", \"smart\"]\nclassifier = { min_quality = 2.0 }",
            "routes[1].classifier.min_quality",
            "0 to 1",
        ),
    ];
    for (route, key, message) in cases {
        let error = load(&with(route), &keys(&[])).unwrap_err();
        assert_eq!(error.key, key, "{route}: {error}");
        assert!(error.message.contains(message), "{route}: {error}");
    }
    let config = load(
        &with("tiers = [\"smart\", \"smart\"]\nclassifier = { max_messages = 3, code = false }"),
        &keys(&[]),
    )
    .unwrap();
    let tiered = config.routes.iter().find(|r| r.name == "tiered").unwrap();
    assert_eq!(tiered.classifier.max_messages, 3);
    assert!(!tiered.classifier.code_is_hard && tiered.classifier.math_is_hard);
}
