//! TLS to backends against Debian's redis-server started with a `tls-port` and certificates
//! generated here: verification on by default, a wrong CA or name refused with a clear error,
//! mutual TLS, the explicit insecure switch, and the migration tools over TLS.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use support::{free_port, output_with_timeout, tandem_bin, wait_until, RawConn, RedisServer, Tandem};

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

/// A TLS client connection to tandem that trusts only `ca`.
fn tls_client(port: u16, ca: &Path) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), "localhost".try_into().unwrap()).unwrap();
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

fn tls_request(
    s: &mut rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>,
    args: &[&str],
) -> std::io::Result<String> {
    use std::io::Write;
    s.write_all(&support::encode_cmd(args))?;
    s.flush()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Ok(Some(n)) = support::resp_frame_len(&buf) {
            return Ok(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        let n = support::read_some(s, &mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed"));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[test]
fn clients_connect_over_tls_and_certificates_rotate_on_reload() {
    let pki = pki();
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("listen.pem"), dir.path().join("listen-key.pem"));
    std::fs::copy(&pki.server_cert, &cert).unwrap();
    std::fs::copy(&pki.server_key, &key).unwrap();
    let yaml = format!(
        "tls:\n  cert_file: {}\n  key_file: {}\nbackends:\n  source:\n    url: {}\n",
        cert.display(),
        key.display(),
        redis.url()
    );
    let t = support::TandemBuilder::new().config(&yaml).spawn();
    let port = t.port();
    wait_until(Duration::from_secs(10), "tandem to accept TLS clients", || {
        std::panic::catch_unwind(|| tls_request(&mut tls_client(port, &pki.ca), &["PING"]).ok()).ok().flatten()
            == Some("+PONG\r\n".to_string())
    });
    let mut before = tls_client(port, &pki.ca);
    assert_eq!(tls_request(&mut before, &["SET", "t", "1"]).unwrap(), "+OK\r\n");
    assert_eq!(redis.cli(&["GET", "t"]), "1");

    // A plain-text client gets no service on the TLS port.
    let mut plain = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    plain.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    use std::io::{Read, Write};
    plain.write_all(b"PING\r\n").unwrap();
    let mut got = Vec::new();
    let _ = plain.read_to_end(&mut got);
    assert!(!String::from_utf8_lossy(&got).contains("PONG"), "{got:?}");

    // Rotation: new certificate from another CA, rewrite the files, reload.
    let other = ca("rotated CA");
    let new_key = KeyPair::generate().unwrap();
    let new_cert = CertificateParams::new(vec!["localhost".to_string()]).unwrap().signed_by(&new_key, &other).unwrap();
    let other_ca = dir.path().join("rotated-ca.pem");
    std::fs::write(&other_ca, other.pem()).unwrap();
    std::fs::write(&cert, new_cert.pem()).unwrap();
    std::fs::write(&key, new_key.serialize_pem()).unwrap();
    let generation = || support::http::status(t.admin_port())["generation"].as_u64().unwrap_or(0);
    let g0 = generation();
    t.signal("HUP");
    wait_until(Duration::from_secs(10), "the reload", || generation() > g0);
    // New connections get the new certificate; the old CA no longer verifies it.
    assert_eq!(tls_request(&mut tls_client(port, &other_ca), &["GET", "t"]).unwrap(), "$1\r\n1\r\n");
    assert!(tls_request(&mut tls_client(port, &pki.ca), &["GET", "t"]).is_err());
    // The connection opened before the rotation carries on.
    assert_eq!(tls_request(&mut before, &["INCR", "t"]).unwrap(), ":2\r\n");
}
