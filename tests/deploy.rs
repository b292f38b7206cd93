//! The deployment artefacts against a real tandem: every metric the Grafana dashboard, the
//! Prometheus rules and the runbook name is exported (with the labels they select on), the
//! Kubernetes phase files drive a running proxy through the migration, and the readiness
//! probe script answers like /readyz.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::{http, RawConn, RedisServer, Tandem, TandemBuilder};

/// The files whose metric names must exist.
fn referencing_files() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for (dir, ext) in [("deploy/grafana", "json"), ("deploy/prometheus", "yaml")] {
        let entries = std::fs::read_dir(root.join(dir)).unwrap_or_else(|e| panic!("{dir}: {e}"));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.extension().is_some_and(|x| x == ext) {
                files.push(path);
            }
        }
    }
    files.push(root.join("docs/runbook.md"));
    files.sort();
    files
}

/// A metric referenced in a text, with the label names of the selector right after it.
#[derive(Debug, Default)]
struct Reference {
    labels: BTreeSet<String>,
    /// Where it was seen first, for the failure message.
    seen_in: String,
}

/// Every `tandem_[a-z0-9_]+` word in `text` (not inside a longer word), with the label names
/// of a `{...}` selector written right after it. JSON-escaped quotes are fine: only the label
/// names, before `=`, `!=`, `=~` or `!~`, are read.
fn references(text: &str, origin: &str, into: &mut BTreeMap<String, Reference>) {
    let bytes = text.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut i = 0;
    while let Some(found) = text[i..].find("tandem_") {
        let start = i + found;
        i = start + "tandem_".len();
        if start > 0 && word(bytes[start - 1]) {
            continue;
        }
        let mut end = i;
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase() || bytes[end].is_ascii_digit() || bytes[end] == b'_')
        {
            end += 1;
        }
        if end < bytes.len() && word(bytes[end]) {
            continue; // e.g. an upper-case environment variable name
        }
        let name = &text[start..end];
        let entry =
            into.entry(name.to_string()).or_insert_with(|| Reference { seen_in: origin.into(), ..Default::default() });
        if bytes.get(end) == Some(&b'{') {
            if let Some(close) = text[end..].find('}') {
                for matcher in text[end + 1..end + close].split(',') {
                    let label: String =
                        matcher.trim().chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                    if !label.is_empty() {
                        entry.labels.insert(label);
                    }
                }
            }
        }
        i = end;
    }
}

/// What a `/metrics` page exports: every sample name and family (`# TYPE`) with the label
/// names seen on it.
#[derive(Debug, Default)]
struct Exported {
    labels: BTreeMap<String, BTreeSet<String>>,
}

fn parse_exposition(text: &str) -> Exported {
    let mut exported = Exported::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some(family) = rest.split_whitespace().next() {
                exported.labels.entry(family.to_string()).or_default();
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        let mut labels = BTreeSet::new();
        if line[name_end..].starts_with('{') {
            let body = &line[name_end + 1..line.rfind('}').unwrap_or(line.len())];
            // Label values here are tandem's own (command names, backends): no `,` or `=` in them.
            for pair in body.split(',') {
                if let Some((label, _)) = pair.split_once('=') {
                    labels.insert(label.trim().to_string());
                }
            }
        }
        exported.labels.entry(name.to_string()).or_default().extend(labels.iter().cloned());
        // A histogram's family name selects its series too.
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(family) = name.strip_suffix(suffix) {
                if let Some(set) = exported.labels.get_mut(family) {
                    set.extend(labels.iter().filter(|l| *l != "le").cloned());
                }
            }
        }
    }
    exported
}

/// Labels Prometheus adds when it scrapes (or the test series of the rule unit tests carry).
const SCRAPE_LABELS: [&str; 4] = ["namespace", "pod", "job", "instance"];

/// One line per referenced metric that is not exported, or selected by a label it lacks.
fn problems(referenced: &BTreeMap<String, Reference>, exported: &Exported) -> Vec<String> {
    let mut out = Vec::new();
    for (name, r) in referenced {
        let Some(labels) = exported.labels.get(name) else {
            out.push(format!("{name} (in {}) is not exported", r.seen_in));
            continue;
        };
        for label in &r.labels {
            if !labels.contains(label) && !SCRAPE_LABELS.contains(&label.as_str()) {
                out.push(format!("{name} (in {}) has no label {label:?}; it has {labels:?}", r.seen_in));
            }
        }
    }
    out
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn status_with(port: u16, token: Option<&str>) -> serde_json::Value {
    let (code, body) = http::request(port, "GET", "/status", None, token);
    assert_eq!(code, 200, "GET /status: {body}");
    serde_json::from_str(&body).expect("status is JSON")
}

#[test]
fn the_reference_scanner_flags_unknown_metrics_and_labels() {
    let exposition = "# TYPE tandem_mirror_writes_total counter\n\
        tandem_mirror_writes_total{backend=\"target\",outcome=\"applied\"} 3\n\
        # TYPE tandem_backend_latency_seconds histogram\n\
        tandem_backend_latency_seconds_bucket{backend=\"source\",role=\"serving\",le=\"0.001\"} 1\n\
        tandem_backend_latency_seconds_sum{backend=\"source\",role=\"serving\"} 0.1\n\
        tandem_backend_latency_seconds_count{backend=\"source\",role=\"serving\"} 1\n";
    let exported = parse_exposition(exposition);
    let mut referenced = BTreeMap::new();
    references(
        r#"rate(tandem_mirror_writes_total{namespace=~\"$namespace\", outcome=\"dropped\"}[5m])
           histogram_quantile(0.99, sum by (le) (rate(tandem_backend_latency_seconds_bucket{role="serving"}[5m])))
           tandem_backend_latency_seconds{backend="target"} and TANDEM_ADMIN_TOKEN and tandem-config"#,
        "known",
        &mut referenced,
    );
    assert_eq!(
        referenced.keys().collect::<Vec<_>>(),
        ["tandem_backend_latency_seconds", "tandem_backend_latency_seconds_bucket", "tandem_mirror_writes_total"]
    );
    assert_eq!(problems(&referenced, &exported), Vec::<String>::new());

    references(
        "sum(rate(tandem_no_such_metric_total[5m])) + tandem_mirror_writes_total{side=\"target\"}\n\
         tandem_tandem_compare_total tandem_backend_latency_seconds_total",
        "bad.json",
        &mut referenced,
    );
    let found = problems(&referenced, &exported);
    assert_eq!(found.len(), 4, "{found:#?}");
    assert!(found.iter().any(|p| p.starts_with("tandem_no_such_metric_total (in bad.json) is not exported")));
    assert!(found.iter().any(|p| p.starts_with("tandem_mirror_writes_total (in known) has no label \"side\"")));
    assert!(found.iter().any(|p| p.starts_with("tandem_tandem_compare_total")));
    assert!(found.iter().any(|p| p.starts_with("tandem_backend_latency_seconds_total")));
}

/// Drives every feature whose metrics appear only once used (mirroring, comparison with a
/// confirmed mismatch, a cutover flip, a config reload), then checks each name the dashboard,
/// the alert rules (and their unit tests) and the runbook use.
#[test]
fn every_metric_the_dashboard_alerts_and_runbook_use_is_exported() {
    let mut referenced = BTreeMap::new();
    for path in referencing_files() {
        let origin = path.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap_or(&path).display().to_string();
        references(&read(&path), &origin, &mut referenced);
    }
    assert!(referenced.len() >= 25, "the scan found too few metric names to be working: {:?}", referenced.keys());

    let (source, target) = (RedisServer::start(), RedisServer::start());
    let config = |extra: &str| {
        format!(
            "backends:\n  source:\n    url: {}\n  target:\n    url: {}\ncompare:\n  recheck_delay: 50ms\n{extra}",
            source.url(),
            target.url()
        )
    };
    let proxy = Tandem::start_config(&config(""), &[]);
    let port = proxy.admin_port();
    assert_eq!(http::post(port, "/mirror", r#"{"mode": "async"}"#).0, 200);
    assert_eq!(http::post(port, "/compare", r#"{"percent": 100}"#).0, 200);

    let mut c = RawConn::connect(proxy.addr());
    for i in 0..50 {
        c.request(&["SET", &format!("k{i}"), "v"]);
        c.request(&["GET", &format!("k{i}")]);
    }
    c.request(&["INCR", "counter"]);
    c.request(&["MGET", "k1", "k2", "k3", "k4"]);
    // A confirmed mismatch: the target changed behind the proxy's back.
    support::wait_until(Duration::from_secs(5), "user:1 mirrored", || {
        c.request(&["SET", "user:1", "alice"]);
        target.cli(&["GET", "user:1"]) == "alice"
    });
    target.cli(&["SET", "user:1", "mallory"]);
    c.request(&["GET", "user:1"]);
    support::wait_until(Duration::from_secs(10), "a confirmed compare mismatch", || {
        http::status(port)["compare"]["mismatch"].as_u64().unwrap_or(0) >= 1
    });
    // A cutover flip, then a config reload from the file.
    let (code, body) = http::post(port, "/cutover", r#"{"percent": 50}"#);
    assert_eq!(code, 200, "{body}");
    proxy.write_config(&config("limits:\n  max_clients: 5000\n"));
    support::wait_until(Duration::from_secs(10), "the edited file reloaded", || {
        http::status(port)["reloads"]["ok"].as_u64().unwrap_or(0) >= 1
    });
    for i in 0..50 {
        c.request(&["GET", &format!("k{i}")]);
    }

    let exported = parse_exposition(&http::get(port, "/metrics"));
    let found = problems(&referenced, &exported);
    assert!(
        found.is_empty(),
        "deploy/ and docs/ name metrics tandem does not export:\n  {}\nexported: {:?}",
        found.join("\n  "),
        exported.labels.keys().collect::<Vec<_>>()
    );
}

/// The Kubernetes phase files (base, overlays in order, cleanup) applied to one running proxy
/// as a ConfigMap update would: each reload puts tandem in the state its phase describes.
#[test]
fn the_kubernetes_phase_files_walk_a_running_proxy_through_the_migration() {
    const SOURCE_URL: &str = "redis://redis-source.data.svc.cluster.local:6379";
    const TARGET_URL: &str = "redis://valkey-target.data.svc.cluster.local:6379";
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/k8s");
    let source = RedisServer::start_with(&["--requirepass", "source-pw"]);
    let target = RedisServer::start_with(&["--requirepass", "target-pw"]);
    let work = tempfile::tempdir().expect("tempdir");
    // The files as the ConfigMap holds them, pointed at the local servers and a writable dir.
    let local = |phase: &str| {
        let file = if phase == "base" {
            root.join("base/proxy.yaml")
        } else {
            root.join("overlays").join(phase).join("proxy.yaml")
        };
        let text = read(&file);
        // Every phase names the target (in cleanup it is the only, "source", backend).
        assert!(text.contains(TARGET_URL), "{}: expected the example URL {TARGET_URL}", file.display());
        text.replace(SOURCE_URL, &source.url())
            .replace(TARGET_URL, &target.url())
            .replace("/var/lib/tandem/", &format!("{}/", work.path().display()))
    };
    const TOKEN: &str = "phase-walk-token";
    let proxy = TandemBuilder::new()
        .config(&local("base"))
        .env("SOURCE_REDIS_PASSWORD", "source-pw")
        .env("TARGET_REDIS_PASSWORD", "target-pw")
        .env("TANDEM_ADMIN_TOKEN", TOKEN)
        .start();
    let port = proxy.admin_port();
    assert_eq!(http::request(port, "GET", "/status", None, None).0, 401, "the admin API needs the token");
    let mut c = RawConn::connect(proxy.addr());
    assert_eq!(c.request(&["SET", "session:1", "a", "EX", "3600"]), b"+OK\r\n");

    // phase, mirror mode, compare percent, cutover percent, backends
    let phases: [(&str, &str, f64, f64, usize); 8] = [
        ("shadow", "async", 10.0, 0.0, 2),
        ("dual-write", "sync", 10.0, 0.0, 2),
        ("ramp-10", "sync", 10.0, 10.0, 2),
        ("ramp-50", "sync", 10.0, 50.0, 2),
        ("ramp-100", "sync", 10.0, 100.0, 2),
        ("rollback", "sync", 10.0, 0.0, 2),
        ("ramp-100", "sync", 10.0, 100.0, 2),
        ("cleanup", "off", 0.0, 0.0, 1),
    ];
    let mut n = 0;
    for (phase, mode, compare, cutover, backends) in phases {
        proxy.write_config(&local(phase));
        let mut last = serde_json::Value::Null;
        support::wait_until(Duration::from_secs(10), &format!("phase {phase} applied"), || {
            last = status_with(port, Some(TOKEN));
            last["mirror"]["mode"] == mode
                && last["compare"]["percent"].as_f64() == Some(compare)
                && last["cutover"]["percent"].as_f64() == Some(cutover)
                && last["backends"].as_array().map(Vec::len) == Some(backends)
        });
        assert!(last["last_reload_error"].is_null(), "{phase}: {last}");
        // Writes keep working in every phase, and (until cleanup) reach both stores.
        n += 1;
        let key = format!("session:{phase}:{n}");
        assert_eq!(c.request(&["SET", &key, "v", "EX", "3600"]), b"+OK\r\n", "{phase}");
        if mode != "off" {
            support::wait_until(Duration::from_secs(5), &format!("{key} on both stores"), || {
                source.cli(&["EXISTS", &key]) == "1" && target.cli(&["EXISTS", &key]) == "1"
            });
        }
    }
    // After cleanup the former target is the only store, through the same connection string.
    assert_eq!(c.request(&["SET", "after-cleanup", "1"]), b"+OK\r\n");
    assert_eq!(target.cli(&["GET", "after-cleanup"]), "1");
    assert_eq!(source.cli(&["EXISTS", "after-cleanup"]), "0");
}

/// deploy/tandem-readyz, the readiness probe of the Kubernetes manifests, against /readyz.
#[test]
fn the_readiness_probe_script_passes_only_with_the_token_and_the_serving_backends_up() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/tandem-readyz");
    let (source, mut target) = (RedisServer::start(), RedisServer::start());
    const TOKEN: &str = "probe-token";
    let yaml = format!(
        "admin:\n  token_env: TANDEM_ADMIN_TOKEN\nbackends:\n  source:\n    url: {}\n  target:\n    url: {}\n",
        source.url(),
        target.url()
    );
    let proxy = TandemBuilder::new().config(&yaml).env("TANDEM_ADMIN_TOKEN", TOKEN).start();
    let probe = |token: Option<&str>| {
        let mut cmd = Command::new("bash");
        cmd.arg(&script).env("TANDEM_READYZ_ADDR", proxy.admin_addr()).env_remove("TANDEM_ADMIN_TOKEN");
        if let Some(token) = token {
            cmd.env("TANDEM_ADMIN_TOKEN", token);
        }
        let out = support::output_with_timeout(cmd, Duration::from_secs(10));
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    support::wait_until(Duration::from_secs(10), "ready", || probe(Some(TOKEN)).0);
    let (ok, why) = probe(Some("wrong"));
    assert!(!ok && why.contains("401"), "{why}");
    let (ok, why) = probe(None);
    assert!(!ok && why.contains("401"), "{why}");

    // The target serves slots once the cutover moves: with it down, the pod is not ready.
    let (code, body) = http::request(proxy.admin_port(), "POST", "/cutover", Some(r#"{"percent": 50}"#), Some(TOKEN));
    assert_eq!(code, 200, "{body}");
    target.stop();
    let mut last = (true, String::new());
    support::wait_until(Duration::from_secs(10), "not ready with the target down", || {
        last = probe(Some(TOKEN));
        !last.0
    });
    assert!(last.1.contains("503") && last.1.contains("target"), "{}", last.1);
    // Serving only from the source again: ready, although the target is still down.
    let (code, body) = http::request(proxy.admin_port(), "POST", "/rollback", Some("{}"), Some(TOKEN));
    assert_eq!(code, 200, "{body}");
    support::wait_until(Duration::from_secs(10), "ready after the rollback", || probe(Some(TOKEN)).0);
}
