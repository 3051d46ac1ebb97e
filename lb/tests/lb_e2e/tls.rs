//! TLS: mTLS identity in the PROXY v2 TLVs, SNI certificate selection, refused client certificates.

use std::sync::Arc;

use fleetgate_testkit::Pki;
use fleetgate_testkit::pki::SERVER_CN;
use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::harness::*;

/// Waits until listener `listener` counted `at_least` failed TLS handshakes.
async fn wait_tls_failures(lb: &TestLb, listener: &str, at_least: f64) {
    let failures = "fleetgate_lb_tls_handshake_failures_total";
    lb.admin
        .wait_count(failures, &[("listener", listener)], at_least)
        .await;
}

#[tokio::test]
async fn mtls_identity_reaches_the_backend() {
    let pki = Pki::new();
    let mut b = FakeBackend::start("broker-0").await;
    let cfg = config(
        &[
            tls_listener("tls-mtls", &pki, "required", ""),
            backend(&b, "send_client_cert = true"),
        ],
        "",
    );
    let lb = TestLb::start(cfg).await;
    let cert = pki.client_with_sans("device-7", &["device-7.devices.test"]);
    tls_connect(lb.addr("tls-mtls"), "device-7", &pki, Some(&cert))
        .await
        .unwrap();
    let seen = b.next().await;
    let id = &seen.header.identity;
    assert!(id.tls && id.cert_presented && id.cert_verified, "{id:?}");
    assert_eq!(id.cn.as_deref(), Some("device-7"));
    assert_eq!(id.sans, vec!["DNS:device-7.devices.test".to_string()]);
    assert_eq!(id.tls_version.as_deref(), Some("TLSv1.3"));
    assert!(id.cipher.is_some() && id.group.is_some(), "{id:?}");
    assert_eq!(id.key_alg.as_deref(), Some("EC256"));
    // The LB's certificate is ECDSA P-256: its CertificateVerify is signed with that scheme (IANA name).
    assert_eq!(id.sig_scheme.as_deref(), Some("ecdsa_secp256r1_sha256"));
    assert!(id.client_cert_der.as_ref().is_some_and(|d| !d.is_empty()));
    assert_eq!(
        id.alpn, None,
        "rumqttc offers no ALPN and is still accepted"
    );
    assert_eq!(id.lb_client_id.as_deref(), Some("device-7"));
    assert_eq!(seen.header.source.unwrap().ip().to_string(), "127.0.0.1");
    lb.admin
        .wait_count(
            "fleetgate_lb_tls_handshake_duration_seconds_count",
            &[("listener", "tls-mtls")],
            1.0,
        )
        .await;

    // TLS 1.2: the scheme is the one of the ServerKeyExchange signature.
    rumqttc_connect(
        lb.addr("tls-mtls"),
        "device-7",
        Some(pki.client_config_with_versions(&[&rustls::version::TLS12], Some(&cert))),
    )
    .await
    .unwrap();
    let id = b.next().await.header.identity;
    assert_eq!(id.tls_version.as_deref(), Some("TLSv1.2"));
    assert_eq!(id.cn.as_deref(), Some("device-7"));
    assert_eq!(id.sig_scheme.as_deref(), Some("ecdsa_secp256r1_sha256"));
}

#[tokio::test]
async fn optional_client_auth_without_certificate() {
    let pki = Pki::new();
    let (mut b, lb) = lb_with_backend(tls_listener("tls-optional", &pki, "optional", ""), "").await;
    tls_connect(lb.addr("tls-optional"), "anon", &pki, None)
        .await
        .unwrap();
    let id = b.next().await.header.identity;
    assert!(id.tls && !id.cert_presented && !id.cert_verified, "{id:?}");
    assert_eq!(id.cn, None);
}

#[tokio::test]
async fn expired_and_foreign_client_certificates_are_refused() {
    let pki = Pki::new();
    let (mut b, lb) = lb_with_backend(tls_listener("tls-refuse", &pki, "required", ""), "").await;
    let addr = lb.addr("tls-refuse");
    let expired = pki.expired_client("old-device");
    assert!(
        tls_connect(addr, "old-device", &pki, Some(&expired))
            .await
            .is_err()
    );
    let foreign = pki.foreign_client("intruder");
    assert!(
        tls_connect(addr, "intruder", &pki, Some(&foreign))
            .await
            .is_err()
    );
    assert!(tls_connect(addr, "no-cert", &pki, None).await.is_err());
    wait_tls_failures(&lb, "tls-refuse", 3.0).await;
    assert!(b.nothing_yet());
}

#[tokio::test]
async fn plaintext_client_on_tls_port_is_refused() {
    let pki = Pki::new();
    let (mut b, lb) = lb_with_backend(tls_listener("tls-plain", &pki, "none", ""), "").await;
    let got = sent_before_close(lb.addr("tls-plain"), &raw_connect(4, "confused", 30)).await;
    assert!(
        !got.starts_with(&[0x20]),
        "no CONNACK on a TLS port: {got:?}"
    );
    wait_tls_failures(&lb, "tls-plain", 1.0).await;
    assert!(b.nothing_yet());
}

#[tokio::test]
async fn sni_selects_the_certificate_and_is_sent_as_authority() {
    let pki = Pki::new();
    let iot = pki.server_for("iot.test");
    let mut b = FakeBackend::start("broker-0").await;
    let extra = format!(
        "[[listeners.tls.certificates]]\ncert = {:?}\nkey = {:?}\nsni = [\"iot.test\"]\n",
        iot.cert.display().to_string(),
        iot.key.display().to_string()
    );
    // The listener's inline `certificates` array cannot be extended with a table array, so build it by hand.
    let tls = format!(
        "{}[listeners.tls]\nclient_auth = \"none\"\n[[listeners.tls.certificates]]\ncert = {:?}\nkey = {:?}\n{extra}",
        listener("tls-sni", "127.0.0.1:0"),
        pki.server().cert.display().to_string(),
        pki.server().key.display().to_string(),
    );
    let cfg = config(&[tls, backend(&b, "")], "");
    let lb = TestLb::start(cfg).await;

    let mut client_config = (*pki.client_config(None)).clone();
    client_config.alpn_protocols = vec![b"mqtt".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
    let tcp = TcpStream::connect(lb.addr("tls-sni")).await.unwrap();
    let mut tls = connector
        .connect(ServerName::try_from("iot.test").unwrap(), tcp)
        .await
        .unwrap();
    let peer_cert = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let fields = fleetgate_lb::CertFields::parse(peer_cert.as_ref());
    assert_eq!(fields.cn.as_deref(), Some("iot.test"));
    tls.write_all(&raw_connect(5, "sni-client", 30))
        .await
        .unwrap();
    let seen = b.next().await;
    assert_eq!(seen.header.identity.authority.as_deref(), Some("iot.test"));
    assert_eq!(seen.header.identity.alpn.as_deref(), Some(&b"mqtt"[..]));
    assert_eq!(seen.connect.protocol_level, 5);

    // Unknown SNI gets the default certificate.
    let tcp = TcpStream::connect(lb.addr("tls-sni")).await.unwrap();
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let fields =
        fleetgate_lb::CertFields::parse(tls.get_ref().1.peer_certificates().unwrap()[0].as_ref());
    assert_eq!(fields.cn.as_deref(), Some(SERVER_CN));
}

#[tokio::test]
async fn revoked_client_certificate_is_refused() {
    let pki = Pki::new();
    let (revoked, crl_file) = pki.revoked_client("stolen-device", 4242);
    let mut b = FakeBackend::start("broker-0").await;
    let crls = format!("crls = [{:?}]", crl_file.display().to_string());
    let cfg = config(
        &[
            tls_listener("tls-crl", &pki, "required", &crls),
            tls_listener("tls-no-crl", &pki, "required", ""),
            backend(&b, ""),
        ],
        "",
    );
    let lb = TestLb::start(cfg).await;
    let addr = lb.addr("tls-crl");
    assert!(
        tls_connect(addr, "stolen", &pki, Some(&revoked))
            .await
            .is_err()
    );
    // The same certificate passes where the CRL is not loaded: the CRL is what refused it.
    tls_connect(lb.addr("tls-no-crl"), "stolen", &pki, Some(&revoked))
        .await
        .unwrap();
    assert_eq!(
        b.next().await.header.identity.cn.as_deref(),
        Some("stolen-device")
    );
    let good = pki.client("good-device");
    tls_connect(addr, "good", &pki, Some(&good)).await.unwrap();
    assert_eq!(
        b.next().await.header.identity.cn.as_deref(),
        Some("good-device")
    );
    wait_tls_failures(&lb, "tls-crl", 1.0).await;
}
