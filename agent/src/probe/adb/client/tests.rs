//! The client against tiny scripted servers on loopback.

use super::*;
use tokio::net::TcpListener;

/// A server that answers the first connection with `script` (bytes, then
/// a pause in ms), then keeps it open for a while.
async fn scripted(script: Vec<(&[u8], u64)>) -> AdbSettings {
    let script: Vec<(Vec<u8>, u64)> = script.into_iter().map(|(b, p)| (b.to_vec(), p)).collect();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.expect("accept");
        let mut request = [0u8; 64];
        let _ = sock.read(&mut request).await;
        for (bytes, pause_ms) in script {
            sock.write_all(&bytes).await.expect("write");
            tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    });
    AdbSettings {
        server: addr.to_string(),
        max_frame_bytes: 1024,
        request_timeout: Duration::from_millis(300),
        ..AdbSettings::default()
    }
}

#[tokio::test]
async fn a_fail_reply_becomes_a_refusal_with_the_servers_message() {
    let s = scripted(vec![(b"FAIL0014unknown host service", 0)]).await;
    let mut conn = Connection::open(&s).await.expect("connect");
    let err = conn.request("host:bogus").await.expect_err("FAIL");
    assert_eq!(
        err.to_string(),
        "adb server refused \"host:bogus\": unknown host service"
    );
}

#[tokio::test]
async fn a_closed_port_is_reported_as_connection_refused() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let server = listener.local_addr().expect("addr").to_string();
    drop(listener);
    let s = AdbSettings {
        server: server.clone(),
        ..AdbSettings::default()
    };
    let err = Connection::open(&s).await.expect_err("nobody listens");
    assert_eq!(
        err.to_string(),
        format!("adb server {server} unreachable: connection refused")
    );
}

#[tokio::test]
async fn a_silent_server_times_out() {
    let s = scripted(vec![]).await;
    let mut conn = Connection::open(&s).await.expect("connect");
    let err = conn.request("host:version").await.expect_err("silence");
    assert_eq!(
        err.to_string(),
        "adb server gave no complete answer to \"host:version\" within 300 ms"
    );
}

#[tokio::test]
async fn a_one_shot_frame_is_length_checked_before_it_is_read() {
    let s = scripted(vec![(b"OKAYffff", 0)]).await;
    let mut conn = Connection::open(&s).await.expect("connect");
    conn.request("host:devices-l").await.expect("OKAY");
    let err = conn
        .read_frame("host:devices-l")
        .await
        .expect_err("too big");
    assert_eq!(
        err.to_string(),
        "frame of 65535 bytes exceeds max_frame_bytes 1024"
    );
}

#[tokio::test]
async fn a_raw_reply_longer_than_max_frame_bytes_is_refused() {
    let big = vec![b'x'; 2000];
    let s = scripted(vec![(b"OKAY", 0), (&big, 0)]).await;
    let mut conn = Connection::open(&s).await.expect("connect");
    conn.request("shell:getprop").await.expect("OKAY");
    let err = conn
        .read_to_end("shell:getprop")
        .await
        .expect_err("too big");
    assert_eq!(
        err.to_string(),
        "reply of more than 1024 bytes exceeds max_frame_bytes 1024"
    );
}

#[tokio::test]
async fn a_cancelled_fill_loses_no_bytes() {
    let s = scripted(vec![(b"OKAY000", 150), (b"5hel", 150), (b"lo", 0)]).await;
    let mut conn = Connection::open(&s).await.expect("connect");
    conn.request("host:track-devices-l").await.expect("OKAY");
    let mut tracker = conn.into_tracker();
    let frame = loop {
        if let Some(f) = tracker.next_frame().expect("valid") {
            break f;
        }
        tokio::select! {
            r = tracker.fill() => r.expect("open"),
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
    };
    assert_eq!(frame, "hello");
    assert_eq!(tracker.deadline(), None, "nothing partial is left");
}

#[tokio::test]
async fn an_incomplete_frame_sets_a_deadline() {
    let s = scripted(vec![(b"OKAY0005he", 0)]).await;
    let mut conn = Connection::open(&s).await.expect("connect");
    conn.request("host:track-devices-l").await.expect("OKAY");
    let mut tracker = conn.into_tracker();
    while tracker.deadline().is_none() {
        tracker.fill().await.expect("open");
        assert_eq!(tracker.next_frame().expect("valid"), None);
    }
    assert!(tracker.timed_out().to_string().contains("within 300 ms"));
}
