//! Tests for the configuration module.

use std::io::Write;
use std::time::Duration;

use crate::config::units::{parse_byte_size, parse_duration};
use crate::config::{
    defaults, Admin, AllowList, Backend, BackendUrl, Backoff, Compare, Config, ConfigErrors, Cutover, Limits, Log,
    LogFormat, Mirror, MirrorMode, UrlError, UserPassword, Workers,
};

/// The example shipped at the repository root.
const EXAMPLE: &str = include_str!("../../proxy.yaml");

const MINIMAL: &str = "backends: {source: {url: redis://127.0.0.1:6379}}";

fn load(text: &str) -> Config {
    match Config::from_yaml_str(text) {
        Ok(config) => config,
        Err(errors) => panic!("expected a valid config, got:\n{errors}\n--- text:\n{text}"),
    }
}

fn load_err(text: &str) -> ConfigErrors {
    match Config::from_yaml_str(text) {
        Ok(config) => panic!("expected errors, got {config:?}\n--- text:\n{text}"),
        Err(errors) => errors,
    }
}

/// `(path, message)` pairs, for exact comparisons.
fn pairs(errors: &ConfigErrors) -> Vec<(String, String)> {
    errors.iter().map(|e| (e.path.clone(), e.message.clone())).collect()
}

fn paths(errors: &ConfigErrors) -> Vec<String> {
    errors.iter().map(|e| e.path.clone()).collect()
}

/// Sets an environment variable for a test (`unsafe` from edition 2024 on). Each test uses its own unique
/// variable names, so tests running in parallel never share one.
#[allow(unused_unsafe)]
fn set_env(name: &str, value: &str) {
    // SAFETY: the variable is unique to the calling test, and Rust's own
    // environment accesses are serialised by std; no other code in the test
    // process reads it.
    unsafe { std::env::set_var(name, value) };
}

fn assert_backend_defaults(backend: &Backend) {
    assert_eq!(backend.pool_size, 2);
    assert_eq!(backend.connect_timeout, Duration::from_secs(1));
    assert_eq!(backend.command_timeout, Duration::from_secs(5));
    assert_eq!(backend.reconnect_backoff, Backoff { min: Duration::from_millis(50), max: Duration::from_secs(2) });
    assert!(backend.username.is_none());
    assert!(backend.password().is_none());
}

// ---------------------------------------------------------------- examples

#[test]
fn example_proxy_yaml_loads_and_states_the_true_defaults() {
    let config = load(EXAMPLE);
    // Every uncommented value in the example is documented as the default,
    // so it must equal the code's defaults.
    let admin_default = Admin::default();
    assert_eq!(config.listen, defaults::LISTEN);
    assert_eq!(config.admin.listen, admin_default.listen);
    assert!(config.admin.token().is_none());
    assert_eq!(config.log, Log::default());
    assert_eq!(config.limits, Limits::default());
    assert!(!config.auth.enabled());
    assert!(config.allow_commands.is_empty());
    assert_eq!(config.cutover, Cutover::default());
    assert_eq!(config.mirror, Mirror::default());
    assert_eq!(config.compare, Compare::default());
    assert_eq!(config.workers, Workers::default());
    assert_eq!(config.backends.source.url.to_string(), "redis://127.0.0.1:6379");
    assert_backend_defaults(&config.backends.source);
    let target = config.backends.target.as_ref().expect("example has a target");
    assert_backend_defaults(target);
}

#[test]
fn example_proxy_yaml_mentions_every_field() {
    let fields = [
        "listen",
        "admin",
        "token_env",
        "token_file",
        "log",
        "format",
        "level",
        "backends",
        "source",
        "target",
        "url",
        "username",
        "password_env",
        "password_file",
        "pool_size",
        "connect_timeout",
        "command_timeout",
        "reconnect_backoff",
        "min",
        "max",
        "limits",
        "max_clients",
        "max_bulk_len",
        "max_array_len",
        "idle_timeout",
        "max_pipeline",
        "auth",
        "users",
        "name",
        "password_sha256",
        "read_only",
        "allow_commands",
        "cutover",
        "percent",
        "flip_timeout",
        "mirror",
        "mode",
        "queue_len",
        "timeout",
        "journal",
        "journal_max_bytes",
        "compare",
        "recheck_delay",
        "ttl_tolerance",
        "log_values",
        "log_max_bytes",
        "ramp",
        "steps",
        "hold",
        "guardrails",
        "window",
        "max_target_error_ratio",
        "max_mismatch_ratio",
        "max_p99_ratio",
        "min_requests",
        "workers",
    ];
    for field in fields {
        let as_key = format!("{field}:");
        assert!(
            EXAMPLE.lines().any(|line| {
                let line = line.trim_start().trim_start_matches('#').trim_start();
                line.trim_start_matches("- ").starts_with(&as_key)
            }),
            "proxy.yaml does not document `{field}`"
        );
    }
}

#[test]
fn minimal_config_gets_all_defaults() {
    let config = load(MINIMAL);
    assert_eq!(config.listen, "127.0.0.1:6380");
    assert_eq!(config.admin.listen, "127.0.0.1:9121");
    assert!(config.admin.token_env.is_none() && config.admin.token_file.is_none());
    assert_eq!(config.log.format, LogFormat::Text);
    assert_eq!(config.log.level, "info");
    assert!(config.backends.target.is_none());
    let source = &config.backends.source;
    assert_eq!(
        source.url,
        BackendUrl {
            tls: false,
            host: "127.0.0.1".into(),
            port: 6379,
            db: 0,
            username: None,
            topology: Default::default(),
            more: Vec::new()
        }
    );
    assert_backend_defaults(source);
    assert_eq!(config.limits.max_clients, 10_000);
    assert_eq!(config.limits.max_bulk_len, 512 * 1024 * 1024);
    assert_eq!(config.limits.max_array_len, 1_048_576);
    assert_eq!(config.limits.idle_timeout, Duration::ZERO);
    assert_eq!(config.limits.max_pipeline, 1024);
    assert!(config.auth.users.is_empty());
    assert!(config.allow_commands.is_empty());
    assert_eq!(config.cutover.percent, 0.0);
    assert_eq!(config.cutover.flip_timeout, Duration::from_secs(5));
    assert_eq!(config.mirror.mode, MirrorMode::Off);
    assert_eq!(config.mirror.queue_len, 100_000);
    assert_eq!(config.mirror.timeout, Duration::from_millis(200));
    assert!(config.mirror.journal.is_none());
    assert_eq!(config.mirror.journal_max_bytes, 64 * 1024 * 1024);
    assert_eq!(config.compare.percent, 0.0);
    assert_eq!(config.compare.recheck_delay, Duration::from_millis(250));
    assert_eq!(config.compare.ttl_tolerance, Duration::from_secs(2));
    assert!(!config.compare.log_values);
}

// ------------------------------------------------- every problem, with paths

#[test]
fn three_distinct_problems_are_all_reported_with_exact_paths() {
    let text = "
backends:
  source:
    url: redis://10.0.0.1:6379
    pool_sise: 4
  target:
    url: redis://10.0.0.2:63799x
cutover:
  percent: 150
";
    let errors = load_err(text);
    assert_eq!(paths(&errors), ["backends.source.pool_sise", "backends.target.url", "cutover.percent"], "{errors}");
    let unknown = &errors.errors()[0].message;
    assert!(unknown.starts_with("unknown field \"pool_sise\", expected one of: url, username"), "{unknown}");
    assert!(unknown.ends_with("(did you mean \"pool_size\"?)"), "{unknown}");
    assert_eq!(errors.errors()[1].message, "invalid port \"63799x\"");
    assert_eq!(errors.errors()[2].message, "must be between 0 and 100, got 150");
    // Display: one per line, `path: message`.
    let shown = errors.to_string();
    assert_eq!(shown.lines().count(), 3);
    assert!(shown.contains("backends.target.url: invalid port \"63799x\"\n"), "{shown}");
}

#[test]
fn unknown_top_level_field_is_reported() {
    let errors = load_err(&format!("{MINIMAL}\nlistn: 0.0.0.0:6380\n"));
    assert_eq!(paths(&errors), ["listn"]);
    let message = &errors.errors()[0].message;
    assert!(message.starts_with("unknown field \"listn\", expected one of: listen, tls, admin,"), "{message}");
    assert!(message.contains("did you mean \"listen\""), "{message}");
}

#[test]
fn type_error_is_reported_at_the_field() {
    let errors = load_err("backends: {source: {url: redis://127.0.0.1:6379, pool_size: many}}");
    assert_eq!(paths(&errors), ["backends.source.pool_size"]);
    let message = &errors.errors()[0].message;
    assert!(message.contains("\"many\"") && message.contains("whole number"), "{message}");
}

#[test]
fn many_structural_problems_in_one_file_are_all_reported() {
    let text = "
listen: [1, 2]
log: {format: xml, colour: true}
backends:
  source: {url: redis://127.0.0.1:6379, connect_timeout: 30}
limits: {max_clients: -1, max_bulk_len: 12xb}
mirror: {mode: fast}
compare: {log_values: maybe}
";
    let errors = load_err(text);
    assert_eq!(
        paths(&errors),
        [
            "listen",
            "log.format",
            "log.colour",
            "backends.source.connect_timeout",
            "limits.max_clients",
            "limits.max_bulk_len",
            "mirror.mode",
            "compare.log_values",
        ],
        "{errors}"
    );
    let at = |path: &str| errors.at(path).map(|e| e.message.clone()).unwrap_or_default();
    assert_eq!(at("log.format"), "unknown value \"xml\", expected one of: text, json");
    assert!(at("backends.source.connect_timeout").contains("needs a unit"));
    assert!(at("mirror.mode").contains("expected one of: off, async, sync"));
}

#[test]
fn paths_keep_file_indices_after_a_list_element_is_dropped() {
    // users[1] is not a mapping and is dropped; every later user, in
    // structural and in meaning errors alike, keeps its index from the file.
    let text = "
backends: {source: {url: redis://127.0.0.1:6379}}
auth:
  users:
    - {name: a, password_sha256: 5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8}
    - bob
    - {password_env: TANDEM_CFG_TEST_UNSET_4c1e}
    - {name: c, colour: red}
    - {name: c, read_only: perhaps}
allow_commands: [debug, 'bad command name here', 'CONFIG SET', '']
";
    let errors = load_err(text);
    assert_eq!(
        paths(&errors),
        [
            "auth.users[1]",
            "auth.users[2].name",
            "auth.users[3].colour",
            "auth.users[4].read_only",
            "allow_commands[1]",
            "allow_commands[3]",
            "auth.users[2].password_env",
            "auth.users[3]",
            "auth.users[4].name",
            "auth.users[4]",
        ],
        "{errors}"
    );
    assert_eq!(
        errors.at("auth.users[1]").map(|e| e.message.as_str()),
        Some("invalid type: string \"bob\", expected a mapping of fields")
    );
    assert_eq!(errors.at("auth.users[2].name").map(|e| e.message.as_str()), Some("missing required field"));
    assert_eq!(
        errors.at("auth.users[4].name").map(|e| e.message.as_str()),
        Some("duplicate user \"c\" (also auth.users[3])")
    );
}

#[test]
fn missing_required_fields_are_reported_once() {
    assert_eq!(pairs(&load_err("")), [("backends".to_string(), "missing required field".to_string())]);
    assert_eq!(paths(&load_err("backends: {}")), ["backends.source"]);
    assert_eq!(paths(&load_err("backends: {source: {pool_size: 3}}")), ["backends.source.url"]);
    // A present-but-invalid required field is reported once, not again as
    // missing.
    assert_eq!(
        pairs(&load_err("backends: {source: {url: 'http://x'}}")),
        [(
            "backends.source.url".to_string(),
            "unsupported scheme \"http\" (expected redis://, rediss://, redis+cluster:// or redis+sentinel://)"
                .to_string()
        )]
    );
}

#[test]
fn missing_or_invalid_required_fields_do_not_hide_other_problems() {
    // The source URL is required; when it is bad or missing, a placeholder
    // stands in so that the meaning checks still run on everything else.
    let text = "
listen: nowhere
backends: {source: {url: 'http://db:6379', username: app}}
auth: {users: [{read_only: true}]}
cutover: {percent: 150}
";
    let errors = load_err(text);
    assert_eq!(
        paths(&errors),
        [
            "backends.source.url",
            "auth.users[0].name",
            "listen",
            "backends.source.username",
            "auth.users[0]",
            "cutover.percent",
            "cutover.percent",
        ],
        "{errors}"
    );
}

#[test]
fn an_invalid_target_does_not_cascade_into_needs_a_target_errors() {
    let text = "
backends:
  source: {url: redis://127.0.0.1:6379}
  target: {url: 'redis://:6380'}
mirror: {mode: sync}
compare: {percent: 5}
";
    assert_eq!(pairs(&load_err(text)), [("backends.target.url".to_string(), "missing host".to_string())]);
}

#[test]
fn semantic_problems_are_all_collected() {
    let text = "
listen: 'localhost'
admin: {listen: '127.0.0.1:9121'}
log: {level: ''}
backends:
  source:
    url: redis://127.0.0.1:6379
    pool_size: 0
    command_timeout: 0
    reconnect_backoff: {min: 5s, max: 1s}
limits: {max_pipeline: 0}
cutover: {percent: 0.5}
mirror: {mode: async, queue_len: 0}
compare: {percent: -1}
";
    let errors = load_err(text);
    assert_eq!(
        paths(&errors),
        [
            "listen",
            "log.level",
            "backends.source.pool_size",
            "backends.source.command_timeout",
            "backends.source.reconnect_backoff.min",
            "limits.max_pipeline",
            "cutover.percent",
            "mirror.mode",
            "mirror.queue_len",
            "compare.percent",
        ],
        "{errors}"
    );
    assert_eq!(errors.at("mirror.mode").map(|e| e.message.as_str()), Some("mirroring needs backends.target"));
    assert_eq!(
        errors.at("backends.source.pool_size").map(|e| e.message.as_str()),
        Some("must be between 1 and 64, got 0")
    );

    let clash = load_err(
        "listen: 127.0.0.1:7000\nadmin: {listen: 127.0.0.1:7000}\nbackends: {source: {url: redis://r:1, pool_size: 65}}",
    );
    assert_eq!(paths(&clash), ["admin.listen", "backends.source.pool_size"]);
}

#[test]
fn identical_source_and_target_is_an_error() {
    let errors = load_err("backends: {source: {url: 'redis://Cache.local:6379'}, target: {url: 'cache.local'}}");
    assert_eq!(
        pairs(&errors),
        [("backends.target.url".to_string(), "same address as backends.source.url".to_string())]
    );
    // Another database on the same server is a different keyspace.
    load("backends: {source: {url: 'redis://h:6379/0'}, target: {url: 'redis://h:6379/1'}}");
}

#[test]
fn yaml_syntax_errors_and_odd_documents() {
    let syntax = load_err("backends: {source: [}");
    assert_eq!(paths(&syntax), [""]);
    assert!(syntax.errors()[0].message.starts_with("invalid YAML:"));
    let not_a_map = load_err("- 1\n- 2");
    assert_eq!(paths(&not_a_map), [""]);
    let bad_key = load_err(&format!("{MINIMAL}\n7: x\n"));
    assert_eq!(paths(&bad_key), [""]);
    assert_eq!(bad_key.to_string(), "invalid key 7: keys must be field names");
}

#[test]
fn yaml_merge_keys_share_settings() {
    let config = load(
        "
backends:
  source: &common {url: redis://10.0.0.1:6379, pool_size: 8, command_timeout: 2s}
  target:
    <<: *common
    url: redis://10.0.0.2:6379
",
    );
    let target = config.backends.target.expect("target");
    assert_eq!(target.pool_size, 8);
    assert_eq!(target.command_timeout, Duration::from_secs(2));
    assert_eq!(target.url.host, "10.0.0.2");
}

#[test]
fn load_reads_files_and_reports_unreadable_ones() {
    let missing = Config::load(std::path::Path::new("/nonexistent/tandem/proxy.yaml")).expect_err("missing file");
    assert_eq!(missing.len(), 1);
    assert_eq!(missing.errors()[0].path, "");
    assert!(missing.to_string().starts_with("cannot read /nonexistent/tandem/proxy.yaml: "));

    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(MINIMAL.as_bytes()).expect("write");
    let config = Config::load(file.path()).expect("loads");
    assert_eq!(config.backends.source.url.port, 6379);
}

// ------------------------------------------------------------ sizes, times

#[test]
fn sizes_accept_integers_and_units() {
    assert_eq!(parse_byte_size("512mb"), Ok(536_870_912));
    assert_eq!(parse_byte_size("64kb"), Ok(65_536));
    assert_eq!(parse_byte_size("64KiB"), Ok(65_536));
    assert_eq!(parse_byte_size("1k"), Ok(1000));
    assert_eq!(parse_byte_size("1gb"), Ok(1 << 30));
    assert_eq!(parse_byte_size("2 MB"), Ok(2 << 20));
    assert_eq!(parse_byte_size("1024"), Ok(1024));
    assert!(parse_byte_size("12xb").is_err());
    assert!(parse_byte_size("mb").is_err());
    assert!(parse_byte_size("1.5mb").is_err());
    assert!(parse_byte_size("99999999999999999999gb").is_err());

    let with = |value: &str| {
        Config::from_yaml_str(&format!("{MINIMAL}\nlimits: {{max_bulk_len: {value}}}")).map(|c| c.limits.max_bulk_len)
    };
    assert_eq!(with("512mb"), Ok(536_870_912));
    assert_eq!(with("'64kb'"), Ok(65_536));
    assert_eq!(with("1024"), Ok(1024));
    let negative = with("-1").expect_err("negative");
    assert_eq!(pairs(&negative), [("limits.max_bulk_len".to_string(), "a size cannot be negative".to_string())]);
    let bad = with("12xb").expect_err("bad unit");
    assert!(bad.errors()[0].message.contains("unknown unit \"xb\""), "{bad}");
}

#[test]
fn durations_need_units_except_zero() {
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
    assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
    assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
    assert!(parse_duration("30").is_err_and(|m| m.contains("needs a unit")));
    assert!(parse_duration("soon").is_err());
    assert!(parse_duration("").is_err());

    let with = |value: &str| {
        Config::from_yaml_str(&format!("{MINIMAL}\nlimits: {{idle_timeout: {value}}}")).map(|c| c.limits.idle_timeout)
    };
    assert_eq!(with("30s"), Ok(Duration::from_secs(30)));
    assert_eq!(with("5m"), Ok(Duration::from_secs(300)));
    assert_eq!(with("0"), Ok(Duration::ZERO));
    assert_eq!(with("'0'"), Ok(Duration::ZERO));
    let bare = with("30").expect_err("bare number");
    assert_eq!(bare.errors()[0].path, "limits.idle_timeout");
    assert!(bare.errors()[0].message.contains("needs a unit, e.g. \"30s\""), "{bare}");
    assert!(with("-5").is_err());
    assert!(with("1.5").is_err());
}

// -------------------------------------------------------------------- URLs

fn url(text: &str) -> BackendUrl {
    match text.parse() {
        Ok(url) => url,
        Err(e) => panic!("{text}: {e}"),
    }
}

#[test]
fn urls_parse() {
    let u = url("redis://10.1.2.3:6380/4");
    assert_eq!((u.tls, u.host.as_str(), u.port, u.db), (false, "10.1.2.3", 6380, 4));
    assert_eq!(u.to_string(), "redis://10.1.2.3:6380/4");

    let u = url("rediss://cache.example.com");
    assert_eq!((u.tls, u.port, u.db), (true, 6379, 0));
    assert_eq!(u.to_string(), "rediss://cache.example.com:6379");

    let u = url("localhost:7000");
    assert_eq!((u.tls, u.host.as_str(), u.port), (false, "localhost", 7000));
    assert_eq!(url("REDIS://h/").db, 0);

    let u = url("redis://[::1]:6390/2");
    assert_eq!((u.host.as_str(), u.port, u.db), ("::1", 6390, 2));
    assert_eq!(u.addr(), "[::1]:6390");
    assert_eq!(u.to_string(), "redis://[::1]:6390/2");
    assert_eq!(url("[fe80::1]").port, 6379);

    let u = url("redis://app@h:1");
    assert_eq!(u.username.as_deref(), Some("app"));
    assert_eq!(u.to_string(), "redis://app@h:1");
    assert_eq!(url(&u.to_string()), u);
}

#[test]
fn bad_urls_are_rejected_with_clear_messages() {
    let err = |text: &str| match text.parse::<BackendUrl>() {
        Ok(u) => panic!("{text} parsed as {u:?}"),
        Err(e) => e,
    };
    assert_eq!(err("redis://h:63799x"), UrlError::InvalidPort("63799x".into()));
    assert_eq!(err("redis://h:63799x").to_string(), "invalid port \"63799x\"");
    assert_eq!(err("redis://h:70000"), UrlError::InvalidPort("70000".into()));
    assert_eq!(err("redis://h:0"), UrlError::InvalidPort("0".into()));
    assert_eq!(err("redis://h:"), UrlError::InvalidPort("".into()));
    assert_eq!(
        err("http://h:1").to_string(),
        "unsupported scheme \"http\" (expected redis://, rediss://, redis+cluster:// or redis+sentinel://)"
    );
    assert_eq!(err("redis://:6379").to_string(), "missing host");
    assert_eq!(err("redis://"), UrlError::MissingHost);
    assert_eq!(err(""), UrlError::Empty);
    assert_eq!(err("redis://::1:6379"), UrlError::UnbracketedIpv6);
    assert_eq!(err("redis://[nope]:1"), UrlError::InvalidIpv6("nope".into()));
    assert_eq!(err("redis://h:1/x"), UrlError::InvalidDb("x".into()));
    assert_eq!(err("redis://h a:1"), UrlError::InvalidHost("h a".into()));
    assert_eq!(err("redis://@h:1"), UrlError::EmptyUser);
}

#[test]
fn inline_passwords_are_rejected_without_echoing_them() {
    for text in [
        "redis://:hunter2@h:1",
        "redis://u:hunter2@h:1",
        "rediss://u:hun@ter2@h:1/0",
        "u:hunter2@h:1",
        "redis://h:1?password=hunter2",
    ] {
        let e = text.parse::<BackendUrl>().expect_err(text);
        let message = e.to_string();
        assert!(!message.contains("hunter2") && !message.contains("ter2"), "{text}: {message}");
        if text.contains('@') {
            assert_eq!(e, UrlError::InlinePassword, "{text}");
            assert!(message.contains("password_env or password_file"), "{message}");
        }
    }
    let errors = load_err("backends: {source: {url: 'redis://app:hunter2@db:6379'}}");
    assert_eq!(paths(&errors), ["backends.source.url"]);
    assert!(!errors.to_string().contains("hunter2"));
    assert!(!format!("{errors:?}").contains("hunter2"));
}

#[test]
fn url_user_name_fills_username() {
    let env = "TANDEM_CFG_TEST_URL_USER_PW";
    set_env(env, "pw");
    let config = load(&format!("backends: {{source: {{url: 'redis://app@h:1', password_env: {env}}}}}"));
    assert_eq!(config.backends.source.username.as_deref(), Some("app"));

    let conflict =
        load_err(&format!("backends: {{source: {{url: 'redis://app@h:1', username: other, password_env: {env}}}}}"));
    assert_eq!(paths(&conflict), ["backends.source.url"]);

    let no_password = load_err("backends: {source: {url: 'redis://app@h:1'}}");
    assert_eq!(paths(&no_password), ["backends.source.username"]);
}

// ----------------------------------------------------------------- secrets

#[test]
fn env_var_secrets_are_resolved() {
    let env = "TANDEM_CFG_TEST_SOURCE_PASSWORD_91c2";
    set_env(env, "s3cr3t-from-env");
    let config = load(&format!("backends: {{source: {{url: redis://h:1, username: app, password_env: {env}}}}}"));
    let password = config.backends.source.password().expect("resolved");
    assert_eq!(password.expose(), "s3cr3t-from-env");
    assert!(password.ct_eq(b"s3cr3t-from-env"));
    assert!(!password.ct_eq(b"s3cr3t-from-enV"));

    let unset = "TANDEM_CFG_TEST_NEVER_SET_77ad";
    let errors = load_err(&format!("backends: {{source: {{url: redis://h:1, password_env: {unset}}}}}"));
    assert_eq!(errors.to_string(), format!("backends.source.password_env: environment variable {unset} is not set"));
}

#[test]
fn file_secrets_are_resolved_and_checked() {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(b"from-a-file\n").expect("write");
    let path = file.path().display().to_string();
    let config = load(&format!(
        "backends: {{source: {{url: redis://h:1, password_file: '{path}'}}}}\n\
         auth: {{users: [{{name: ops, password_file: '{path}'}}]}}"
    ));
    assert_eq!(config.backends.source.password().map(|s| s.expose()), Some("from-a-file"));
    assert_eq!(config.auth.user("ops").and_then(|u| u.password()).map(|s| s.expose()), Some("from-a-file"));

    let env = "TANDEM_CFG_TEST_BOTH_ENV_AND_FILE";
    set_env(env, "x");
    let errors = load_err(&format!(
        "backends:\n  source: {{url: redis://h:1, password_env: {env}, password_file: '{path}'}}\n  \
         target: {{url: redis://h:2, password_file: /nonexistent/tandem/pw}}"
    ));
    assert_eq!(paths(&errors), ["backends.source.password_file", "backends.target.password_file"], "{errors}");
    assert!(errors.errors()[1].message.starts_with("cannot read \"/nonexistent/tandem/pw\":"));
}

#[test]
fn secrets_never_appear_in_debug_output() {
    let env = "TANDEM_CFG_TEST_PLANTED_SECRET_5e1f";
    set_env(env, "planted-Secret-VALUE-42");
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(b"planted-FILE-secret-43").expect("write");
    let path = file.path().display().to_string();
    let hash = "ab".repeat(32);
    let config = load(&format!(
        "admin: {{token_env: {env}}}\n\
         backends:\n  source: {{url: redis://h:1, password_env: {env}}}\n  \
         target: {{url: redis://h:2, password_file: '{path}'}}\n\
         auth: {{users: [{{name: a, password_env: {env}}}, {{name: b, password_sha256: '{hash}'}}]}}"
    ));
    assert_eq!(config.admin.token().map(|t| t.expose()), Some("planted-Secret-VALUE-42"));
    let debug = format!("{config:?} {:#?}", config);
    for planted in ["planted-Secret-VALUE-42", "planted-FILE-secret-43", hash.as_str()] {
        assert!(!debug.contains(planted), "{planted} leaked into Debug output");
    }
    assert!(debug.contains("***"));
    let secret = config.backends.source.password().expect("resolved");
    assert_eq!(format!("{secret} {secret:?}"), "*** ***");
}

#[test]
fn user_password_rules() {
    let env = "TANDEM_CFG_TEST_USER_PW_0b7d";
    set_env(env, "pw");
    let hash = "5E884898DA28047151D0E56F8DC6292773603D0D6AABBDD62A11EF721D1542D8";
    let config = load(&format!(
        "{MINIMAL}\nauth: {{users: [{{name: default, password_env: {env}}}, \
         {{name: reader, password_sha256: '{hash}', read_only: true}}]}}"
    ));
    assert!(config.auth.enabled());
    let reader = config.auth.user("reader").expect("reader");
    assert!(reader.read_only);
    let digest = reader.password_sha256_digest().expect("digest");
    assert_eq!(digest[0], 0x5e);
    assert_eq!(digest[31], 0xd8);
    assert!(matches!(reader.credential(), Some(UserPassword::Sha256(_))));
    assert_eq!(config.auth.user("default").and_then(|u| u.password()).map(|s| s.expose()), Some("pw"));

    let errors = load_err(&format!(
        "{MINIMAL}\nauth:\n  users:\n\
         \x20   - {{name: a}}\n\
         \x20   - {{name: b, password_env: {env}, password_sha256: '{hash}'}}\n\
         \x20   - {{name: c, password_sha256: 'abc'}}\n\
         \x20   - {{name: a, password_env: {env}}}\n\
         \x20   - {{name: 'has space', password_env: {env}}}\n"
    ));
    assert_eq!(
        paths(&errors),
        [
            "auth.users[0]",
            "auth.users[1].password_sha256",
            "auth.users[2].password_sha256",
            "auth.users[3].name",
            "auth.users[4].name",
        ],
        "{errors}"
    );
    assert_eq!(errors.errors()[3].message, "duplicate user \"a\" (also auth.users[0])");
    assert!(!errors.to_string().contains(hash));
}

// --------------------------------------------------------- allow_commands

#[test]
fn allow_commands_are_normalised_and_matched() {
    let config =
        load(&format!("{MINIMAL}\nallow_commands: ['CONFIG SET', DEBUG, 'client|Kill', flushall, 'config  set']"));
    let list = &config.allow_commands;
    assert_eq!(&list[..], ["config|set", "debug", "client|kill", "flushall"]);
    assert!(list.allows("config|set"));
    assert!(list.allows("CONFIG SET"));
    assert!(list.allows("Config|Set"));
    assert!(!list.allows("config|get"));
    assert!(!list.allows("config"));
    assert!(list.allows("debug"));
    assert!(list.allows("debug|sleep"), "a bare entry allows every subcommand");
    assert!(list.allows("FLUSHALL"));
    assert!(!list.allows("flushdb"));
    assert!(!list.allows(""));
    assert!(!list.allows("a b c"));

    let container = AllowList::new(["config"]).expect("valid");
    assert!(container.allows("config|set") && container.allows("config|get"));
    assert!(container.allows("config"));
    assert!(AllowList::new(["a b c"]).is_err());
    assert!(AllowList::default().is_empty() && !AllowList::default().allows("debug"));
}

// --------------------------------------------------------------- overrides

#[test]
fn overrides_replace_fields_and_keep_the_rest() {
    let mut config = load("backends: {source: {url: redis://h:1, pool_size: 7}, target: {url: redis://t:1}}");
    config
        .apply_overrides(
            Some("0.0.0.0:7000".into()),
            Some("[::1]:9000".into()),
            Some("rediss://other:6000/3".into()),
            None,
        )
        .expect("valid overrides");
    assert_eq!(config.listen, "0.0.0.0:7000");
    assert_eq!(config.admin.listen, "[::1]:9000");
    assert_eq!(config.backends.source.url.to_string(), "rediss://other:6000/3");
    assert_eq!(config.backends.source.pool_size, 7, "other backend fields stay");
    assert_eq!(config.backends.target.as_ref().map(|t| t.url.host.as_str()), Some("t"));
}

#[test]
fn override_errors_name_the_flag_and_leave_the_config_unchanged() {
    let mut config = load(MINIMAL);
    let errors = config
        .apply_overrides(Some("nope".into()), None, Some("redis://h:x".into()), Some("redis://u:hunter2@t:1".into()))
        .expect_err("bad overrides");
    assert_eq!(paths(&errors), ["--listen", "--source", "--target"]);
    assert_eq!(errors.errors()[1].to_string(), "--source: invalid port \"x\"");
    assert!(!errors.to_string().contains("hunter2"));
    assert_eq!(config.listen, defaults::LISTEN);
    assert_eq!(config.backends.source.url.host, "127.0.0.1");

    let same = config.apply_overrides(None, None, None, Some("127.0.0.1:6379".into())).expect_err("same as source");
    assert_eq!(same.to_string(), "--target: same address as backends.source.url");
    assert!(config.backends.target.is_none());
}

#[test]
fn from_overrides_builds_a_config_without_a_file() {
    let missing = Config::from_overrides(None, None, None, None).expect_err("needs source");
    assert_eq!(paths(&missing), ["--source"]);

    let config = Config::from_overrides(None, None, Some("redis://10.0.0.1:6379".into()), Some("10.0.0.2:6379".into()))
        .expect("valid");
    assert_eq!(config.listen, defaults::LISTEN);
    assert_eq!(config.backends.source.url.host, "10.0.0.1");
    let target = config.backends.target.as_ref().expect("target");
    assert_eq!(target.url.to_string(), "redis://10.0.0.2:6379");
    assert_backend_defaults(target);

    let same = Config::from_overrides(None, None, Some("redis://h:1".into()), Some("h:1".into())).expect_err("same");
    assert_eq!(same.to_string(), "--target: same address as --source");
}

#[test]
fn cluster_and_sentinel_urls() {
    use crate::config::url::Topology;
    let c = url("redis+cluster://10.0.0.1:7000,10.0.0.2:7001,[::1]:7002");
    assert_eq!(c.topology, Topology::Cluster);
    assert_eq!(c.addrs(), ["10.0.0.1:7000", "10.0.0.2:7001", "[::1]:7002"]);
    assert_eq!(c.to_string(), "redis+cluster://10.0.0.1:7000,10.0.0.2:7001,[::1]:7002");
    let tls: BackendUrl = "rediss+cluster://a:1".parse().unwrap();
    assert!(tls.tls && tls.topology == Topology::Cluster);
    assert_eq!(
        "redis+cluster://a:1/2".parse::<BackendUrl>().unwrap_err().to_string(),
        "a Redis Cluster has only database 0"
    );

    let s = url("redis+sentinel://s1,s2:5000/mymaster/3");
    assert_eq!(s.topology, Topology::Sentinel { master: "mymaster".into() });
    assert_eq!(s.addrs(), ["s1:26379", "s2:5000"]);
    assert_eq!(s.db, 3);
    assert_eq!(s.to_string(), "redis+sentinel://s1:26379,s2:5000/mymaster/3");
    assert_eq!(
        "redis+sentinel://s1:5000".parse::<BackendUrl>().unwrap_err().to_string(),
        "missing master name (expected redis+sentinel://host:port,.../master-name)"
    );
    assert_eq!(
        "redis://a:1,b:2".parse::<BackendUrl>().unwrap_err().to_string(),
        "several addresses need redis+cluster:// or redis+sentinel://"
    );
    // Sharing one address makes two clusters the same endpoint.
    assert!(url("redis+cluster://a:1,b:2").same_endpoint(&url("redis+cluster://c:3,b:2")));
    assert!(!url("redis+cluster://a:1").same_endpoint(&url("redis://a:1")));
}

// ---------------------------------------------------------------- workers

#[test]
fn workers_is_one_by_default_or_auto_or_a_number_of_threads() {
    assert_eq!(load(MINIMAL).workers, Workers::Fixed(1));
    assert!(Workers::Auto.count() >= 1);
    for (text, want) in
        [("auto", Workers::Auto), ("\"auto\"", Workers::Auto), ("1", Workers::Fixed(1)), ("4", Workers::Fixed(4))]
    {
        assert_eq!(load(&format!("{MINIMAL}\nworkers: {text}")).workers, want, "workers: {text}");
    }
    assert_eq!(Workers::Fixed(3).count(), 3);
    assert_eq!(Workers::Fixed(3).to_string(), "3");
    assert_eq!(Workers::Auto.to_string(), "auto");
}

#[test]
fn workers_out_of_range_or_not_a_number_is_an_error_at_its_path() {
    for (text, says) in [
        ("0", "got 0"),
        ("-2", "got -2"),
        ("1025", "got 1025"),
        ("many", "got \"many\""),
        ("2.5", "\"auto\" or a number of threads"),
    ] {
        let errors = load_err(&format!("{MINIMAL}\nworkers: {text}"));
        assert_eq!(paths(&errors), ["workers"], "workers: {text}: {errors}");
        assert!(errors.to_string().contains(says), "workers: {text}: {errors}");
    }
}
