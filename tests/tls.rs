//! TLS to backends against Debian's redis-server started with a `tls-port` and certificates
//! generated here: verification on by default, a wrong CA or name refused with a clear error,
//! mutual TLS, the explicit insecure switch, and the migration tools over TLS.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use support::{free_port, output_with_timeout, tandem_bin, RawConn, RedisServer, Tandem};

/// PEM files for one test: a CA, a server certificate for 127.0.0.1 and localhost signed by
/// it, a client certificate signed by it, and an unrelated CA.
struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    other_ca: PathBuf,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, pem: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, pem).unwrap();
        p
    };
    let root = ca("tandem test CA");
    let other = ca("some other CA");
    let server_key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, "redis test server");
    let server = params.signed_by(&server_key, &root).unwrap();
    let client_key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, "tandem");
    let client = params.signed_by(&client_key, &root).unwrap();
    Pki {
        ca: write("ca.pem", root.pem()),
        server_cert: write("server.pem", server.pem()),
        server_key: write("server-key.pem", server_key.serialize_pem()),
        client_cert: write("client.pem", client.pem()),
        client_key: write("client-key.pem", client_key.serialize_pem()),
        other_ca: write("other-ca.pem", other.pem()),
        _dir: dir,
    }
}

/// A redis-server with a plain port (for the harness and the assertions) and a TLS port.
fn tls_redis(pki: &Pki, client_certs: bool) -> (RedisServer, u16) {
    let tls_port = free_port().to_string();
    let redis = RedisServer::start_with(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        pki.server_cert.to_str().unwrap(),
        "--tls-key-file",
        pki.server_key.to_str().unwrap(),
        "--tls-ca-cert-file",
        pki.ca.to_str().unwrap(),
        "--tls-auth-clients",
        if client_certs { "yes" } else { "no" },
    ]);
    (redis, tls_port.parse().unwrap())
}

fn yaml(tls_port: u16, tls: &str) -> String {
    format!("backends:\n  source:\n    url: rediss://127.0.0.1:{tls_port}\n    connect_timeout: 2s\n    tls:\n{tls}")
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn text(b: Vec<u8>) -> String {
    String::from_utf8_lossy(&b).into_owned()
}

#[test]
fn commands_travel_over_verified_tls() {
    let pki = pki();
    let (redis, tls_port) = tls_redis(&pki, false);
    let t = Tandem::start_config(&yaml(tls_port, &format!("      ca_file: {}\n", path(&pki.ca))), &[]);
    let mut c = RawConn::connect(t.addr());
    assert_eq!(text(c.request(&["SET", "over", "tls"])), "+OK\r\n");
    assert_eq!(text(c.request(&["GET", "over"])), "$3\r\ntls\r\n");
    // The value really reached the server behind the TLS port.
    assert_eq!(redis.cli(&["GET", "over"]), "tls");
    // And the TLS port speaks only TLS: a plain backend URL to it gets no service.
    let plain = Tandem::start(&["--source".into(), format!("redis://127.0.0.1:{tls_port}")]);
    let mut c = RawConn::connect(plain.addr());
    let reply = text(c.request(&["GET", "over"]));
    assert!(reply.starts_with("-ERR tandem: backend source unavailable"), "{reply}");
}

#[test]
fn a_certificate_from_another_ca_is_refused_with_a_clear_error() {
    let pki = pki();
    let (_redis, tls_port) = tls_redis(&pki, false);
    let t = Tandem::start_config(&yaml(tls_port, &format!("      ca_file: {}\n", path(&pki.other_ca))), &[]);
    let mut c = RawConn::connect(t.addr());
    let reply = text(c.request(&["GET", "k"]));
    assert!(reply.starts_with("-ERR tandem: backend source unavailable: TLS handshake"), "{reply}");
    assert!(reply.contains("certificate"), "the error should say the certificate is the problem: {reply}");
}

#[test]
fn the_name_in_the_certificate_is_verified() {
    let pki = pki();
    let (_redis, tls_port) = tls_redis(&pki, false);
    let tls = format!("      ca_file: {}\n      server_name: redis.elsewhere.example\n", path(&pki.ca));
    let t = Tandem::start_config(&yaml(tls_port, &tls), &[]);
    let mut c = RawConn::connect(t.addr());
    let reply = text(c.request(&["GET", "k"]));
    assert!(reply.contains("TLS handshake") && reply.contains("certificate"), "{reply}");
}

#[test]
fn mutual_tls_presents_the_client_certificate() {
    let pki = pki();
    let (redis, tls_port) = tls_redis(&pki, true);
    // Without a client certificate the server refuses.
    let t = Tandem::start_config(&yaml(tls_port, &format!("      ca_file: {}\n", path(&pki.ca))), &[]);
    let mut c = RawConn::connect(t.addr());
    let reply = text(c.request(&["SET", "m", "1"]));
    assert!(reply.starts_with("-ERR tandem: backend source unavailable"), "{reply}");
    drop(t);
    // With it, commands go through.
    let tls = format!(
        "      ca_file: {}\n      cert_file: {}\n      key_file: {}\n",
        path(&pki.ca),
        path(&pki.client_cert),
        path(&pki.client_key)
    );
    let t = Tandem::start_config(&yaml(tls_port, &tls), &[]);
    let mut c = RawConn::connect(t.addr());
    assert_eq!(text(c.request(&["SET", "m", "2"])), "+OK\r\n");
    assert_eq!(redis.cli(&["GET", "m"]), "2");
}

#[test]
fn skipping_verification_takes_an_explicit_switch_and_is_logged() {
    let pki = pki();
    let (_redis, tls_port) = tls_redis(&pki, false);
    let tls = format!("      ca_file: {}\n      insecure_skip_verify: true\n", path(&pki.other_ca));
    let t = Tandem::start_config(&yaml(tls_port, &tls), &[]);
    let mut c = RawConn::connect(t.addr());
    assert_eq!(text(c.request(&["SET", "i", "1"])), "+OK\r\n");
    t.wait_for_log("verification is OFF", Duration::from_secs(5));
}

#[test]
fn check_reports_tls_problems_with_their_paths() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "backends:\n  source:\n    url: redis://127.0.0.1:6379\n    tls:\n      ca_file: /x.pem\n".to_string(),
            "backends.source.tls",
            "rediss://",
        ),
        (yaml(6380, "      ca_file: /nonexistent/ca.pem\n"), "backends.source.tls.ca_file", "/nonexistent/ca.pem"),
        (
            yaml(6380, &format!("      ca_file: {}\n      cert_file: {}\n", path(&pki.ca), path(&pki.client_cert))),
            "backends.source.tls.key_file",
            "required",
        ),
        (
            yaml(
                6380,
                &format!(
                    "      ca_file: {}\n      cert_file: {}\n      key_file: {}\n",
                    path(&pki.ca),
                    path(&pki.client_cert),
                    path(&pki.server_key)
                ),
            ),
            "backends.source.tls.key_file",
            "does not match",
        ),
    ];
    for (i, (config, field, words)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("case{i}.yaml"));
        std::fs::write(&file, config).unwrap();
        let mut cmd = Command::new(tandem_bin());
        cmd.arg("check").arg("--config").arg(&file);
        let out = output_with_timeout(cmd, Duration::from_secs(10));
        let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(1), "case {i}: {all}");
        assert!(all.contains(field) && all.contains(words), "case {i}: expected {field} / {words} in: {all}");
    }
}

#[test]
fn backfill_and_verify_work_over_tls() {
    let pki = pki();
    let (source, tls_port) = tls_redis(&pki, false);
    let target = RedisServer::start();
    for i in 0..200 {
        source.cli(&["SET", &format!("s:{i}"), "v", "EX", "600"]);
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("proxy.yaml");
    std::fs::write(
        &config,
        format!(
            "{}  target:\n    url: {}\n",
            yaml(tls_port, &format!("      ca_file: {}\n", path(&pki.ca))),
            target.url()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let mut cmd = Command::new(tandem_bin());
        cmd.args(args).arg("--config").arg(&config).arg("--no-progress");
        output_with_timeout(cmd, Duration::from_secs(30))
    };
    let checkpoint = dir.path().join("cp.json");
    let out = run(&["backfill", "--json", "--checkpoint", checkpoint.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["copied"], 200, "{summary}");
    let out = run(&["verify", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(target.cli(&["DBSIZE"]), "200");
}
