//! `shellwego domains` against a real `shellwego up --runtime process`:
//! two apps under one host name by path, with and without `strip_prefix`,
//! through the real ingress; a removed route falls back to the shorter
//! prefix; an unknown host is a 404.

// Test code may panic: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;

use rustls::pki_types::pem::PemObject;
use std::time::{Duration, Instant};

use serde_json::Value;
use shellwego_testkit::fixtures::hello_tar_gz;
use shellwego_testkit::http::{send, Request};

use crate::apps_cli::start;
use crate::support::Cli;

/// What the hello app answered (`app`, `path`) for `host` and `path`, or
/// the status and body of anything else.
fn get(ingress: SocketAddr, host: &str, path: &str) -> Result<(String, String), (u16, String)> {
    let r = send(ingress, &Request::new("GET", path).host(host)).map_err(|e| (0, e.to_string()))?;
    if r.status != 200 {
        return Err((r.status, r.text()));
    }
    let v: Value = serde_json::from_str(&r.text()).map_err(|e| (r.status, e.to_string()))?;
    Ok((
        v["app"].as_str().unwrap().to_string(),
        v["path"].as_str().unwrap().to_string(),
    ))
}

/// Wait (up to 20 s) until `host` and `path` reach `app` seeing `seen`.
fn until_routed(ingress: SocketAddr, host: &str, path: &str, app: &str, seen: &str) {
    let t = Instant::now();
    loop {
        let got = get(ingress, host, path);
        if got == Ok((app.to_string(), seen.to_string())) {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{host}{path}: {got:?}, not {app} seeing {seen}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn two_apps_share_a_host_by_path_through_the_ingress() {
    let p = start();
    let archive = p.dir().join("hello.tgz");
    std::fs::write(&archive, hello_tar_gz().unwrap()).unwrap();
    for name in ["web", "api"] {
        p.ok(&[
            "apps",
            "create",
            name,
            "--upload",
            archive.to_str().unwrap(),
            "--health-path",
            "/health",
            "--wait",
        ]);
    }
    let ingress = SocketAddr::from(([127, 0, 0, 1], p.ingress_port()));
    let host = "shop.example.com";

    let added = p.json(&["domains", "add", host, "--app", "web"]);
    assert_eq!(added["hostname"], host, "{added:#}");
    assert_eq!(added["routing"]["path"], "/");
    p.ok(&[
        "domains",
        "add",
        host,
        "--app",
        "api",
        "--path",
        "/api",
        "--strip-prefix",
    ]);
    p.ok(&["domains", "add", host, "--app", "api", "--path", "/raw"]);
    let table = p.ok(&["domains", "list"]).stdout;
    assert_eq!(table.matches(host).count(), 3, "{table}");

    // Longest prefix wins; stripped or not; a query string kept; `/apix`
    // is not under `/api`.
    until_routed(ingress, host, "/api/items?x=1", "api", "/items?x=1");
    until_routed(ingress, host, "/api", "api", "/");
    until_routed(ingress, host, "/raw/x", "api", "/raw/x");
    until_routed(ingress, host, "/", "web", "/");
    until_routed(ingress, host, "/apix", "web", "/apix");
    // Any case, a port, a trailing dot: the same host.
    until_routed(ingress, "SHOP.example.com.:80", "/api/a", "api", "/a");
    // The apps are still reached by their own names.
    until_routed(ingress, "api.localhost", "/q", "api", "/q");

    // One of several routes of a host needs its path; then it goes, and
    // its paths fall back to `/`.
    let o = p.fails(&["domains", "remove", host]);
    assert!(o.stderr.contains("--path"), "{}", o.stderr);
    let got = p.json(&["domains", "get", host, "--path", "/raw"]);
    assert_eq!(got["routing"]["strip_prefix"], false, "{got:#}");
    p.ok(&["domains", "remove", host, "--path", "/raw"]);
    until_routed(ingress, host, "/raw/x", "web", "/raw/x");

    // A changed route: stripping off.
    p.ok(&[
        "domains",
        "update",
        host,
        "--path",
        "/api",
        "--strip-prefix",
        "false",
    ]);
    until_routed(ingress, host, "/api/items", "api", "/api/items");

    // A host nobody routes: our 404.
    match get(ingress, "nobody.example.com", "/") {
        Err((404, body)) => assert!(body.contains("nobody.example.com"), "{body}"),
        other => panic!("{other:?}"),
    }
    // Deleting an app deletes its routes: that path falls back too.
    p.ok(&["apps", "delete", "api", "--yes"]);
    until_routed(ingress, host, "/api/items", "web", "/api/items");
    let left = p.json(&["domains", "list"]);
    assert_eq!(left["data"].as_array().unwrap().len(), 1, "{left:#}");
}

/// A root, and a leaf for `names` it signed: (root PEM, leaf PEM, key PEM).
fn pki(names: &[&str]) -> (String, String, String) {
    let root_key = rcgen::KeyPair::generate().unwrap();
    let mut rp = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    rp.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    rp.distinguished_name
        .push(rcgen::DnType::OrganizationName, "Test Root");
    let root = rp.self_signed(&root_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let lp = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        .unwrap();
    let leaf = lp.signed_by(&key, &root, &root_key).unwrap();
    (root.pem(), leaf.pem(), key.serialize_pem())
}

/// What [`https`] saw: (ALPN protocol, the served leaf's DER, the response).
type Handshake = (Option<Vec<u8>>, Vec<u8>, String);

/// A TLS handshake with SNI `name` trusting `root`, then one HTTP/1.1 GET
/// of `path` if ALPN chose it: (ALPN protocol, the served leaf's DER, the
/// response) — or the handshake's error.
fn https(
    addr: SocketAddr,
    root: &str,
    name: &str,
    alpn: &[&[u8]],
    path: &str,
) -> Result<Handshake, String> {
    use rustls::pki_types::pem::PemObject;
    use std::io::{Read, Write};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(root.as_bytes()).unwrap())
        .unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let server = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(cfg), server).unwrap();
    let mut sock = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    let mut text = String::new();
    if alpn.is_empty() || alpn.contains(&&b"http/1.1"[..]) && !alpn.contains(&&b"h2"[..]) {
        write!(
            tls,
            "GET {path} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n"
        )
        .map_err(|e| e.to_string())?;
        let mut buf = vec![];
        let _ = tls.read_to_end(&mut buf);
        text = String::from_utf8_lossy(&buf).into_owned();
    } else {
        tls.flush().map_err(|e| e.to_string())?;
        // Drive the handshake to its end.
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(tls.sock).map_err(|e| e.to_string())?;
        }
    }
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .ok_or("no certificate")?;
    Ok((conn.alpn_protocol().map(<[u8]>::to_vec), leaf, text))
}

#[test]
fn a_custom_certificate_is_served_by_sni_and_http_is_redirected() {
    let p = start();
    let archive = p.dir().join("hello.tgz");
    std::fs::write(&archive, hello_tar_gz().unwrap()).unwrap();
    p.ok(&[
        "apps",
        "create",
        "web",
        "--upload",
        archive.to_str().unwrap(),
        "--health-path",
        "/health",
        "--wait",
    ]);
    let host = "secure.example.com";
    p.ok(&[
        "domains",
        "add",
        host,
        "--app",
        "web",
        "--custom-certificate",
        "--hsts",
    ]);
    let (root, leaf, key) = pki(&[host]);
    let (leaf_f, key_f) = (p.dir().join("leaf.pem"), p.dir().join("key.pem"));
    std::fs::write(&leaf_f, &leaf).unwrap();
    std::fs::write(&key_f, &key).unwrap();
    // A key that is not the certificate's: refused, naming the field.
    let (_, _, other_key) = pki(&[host]);
    let other_f = p.dir().join("other.pem");
    std::fs::write(&other_f, &other_key).unwrap();
    let o = p.fails(&[
        "domains",
        "cert",
        "upload",
        host,
        "--cert",
        leaf_f.to_str().unwrap(),
        "--key",
        other_f.to_str().unwrap(),
    ]);
    assert!(o.stderr.contains("private_key"), "{}", o.stderr);
    let shown = p.json(&[
        "domains",
        "cert",
        "upload",
        host,
        "--cert",
        leaf_f.to_str().unwrap(),
        "--key",
        key_f.to_str().unwrap(),
    ]);
    assert_eq!(shown["tls_status"], "active", "{shown:#}");

    // Served for its SNI name (the same certificate: its serial), to the
    // app; HTTP/2 offered by ALPN.
    let tls_addr = SocketAddr::from(([127, 0, 0, 1], p.https_port()));
    let t = Instant::now();
    let (_, served, text) = loop {
        match https(tls_addr, &root, host, &[b"http/1.1"], "/over-tls") {
            Ok(r) if r.2.contains("over-tls") => break r,
            other => {
                assert!(
                    t.elapsed() < Duration::from_secs(20),
                    "no HTTPS answer: {other:?}\n{}",
                    p.log()
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    assert!(
        text.starts_with("HTTP/1.") && text.contains(" 200 OK"),
        "{text}"
    );
    assert!(text.contains("\"app\": \"web\""), "{text}");
    // HSTS, asked for.
    assert!(
        text.to_ascii_lowercase()
            .contains("strict-transport-security: max-age=31536000"),
        "{text}"
    );
    let serial = |der: &[u8]| {
        x509_parser::parse_x509_certificate(der)
            .unwrap()
            .1
            .raw_serial_as_string()
    };
    let uploaded = rustls::pki_types::CertificateDer::from_pem_slice(leaf.as_bytes()).unwrap();
    assert_eq!(serial(&served), serial(uploaded.as_ref()));
    let (alpn, _, _) = https(tls_addr, &root, host, &[b"h2", b"http/1.1"], "/").unwrap();
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    // A name without a certificate: no handshake.
    assert!(https(tls_addr, &root, "other.example.com", &[], "/").is_err());

    // Plain HTTP to that host: 308 to HTTPS, path and query kept; an ACME
    // challenge stays on HTTP.
    let ingress = SocketAddr::from(([127, 0, 0, 1], p.ingress_port()));
    let r = send(ingress, &Request::new("GET", "/a/b?c=1").host(host)).unwrap();
    assert_eq!(r.status, 308, "{}", r.text());
    assert_eq!(
        r.header("location"),
        Some(format!("https://{host}:{}/a/b?c=1", p.https_port()).as_str())
    );
    let r = send(
        ingress,
        &Request::new("GET", "/.well-known/acme-challenge/tok").host(host),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}
