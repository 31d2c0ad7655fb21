//! gRPC-Web from a browser-like client: HTTP/1.1, base64-free binary framing, CORS, and
//! the trailers frame carrying grpc-status.
#![allow(clippy::unwrap_used)]

mod common;

use common::Server;

/// A gRPC-Web data frame around a protobuf message.
fn frame(msg: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8];
    f.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    f.extend_from_slice(msg);
    f
}

/// Splits the response into (data frames, trailer text).
fn unframe(mut body: &[u8]) -> (Vec<Vec<u8>>, String) {
    let (mut data, mut trailers) = (Vec::new(), String::new());
    while body.len() >= 5 {
        let flag = body[0];
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        let payload = &body[5..5 + len];
        if flag & 0x80 != 0 {
            trailers = String::from_utf8_lossy(payload).into_owned();
        } else {
            data.push(payload.to_vec());
        }
        body = &body[5 + len..];
    }
    (data, trailers)
}

#[tokio::test]
async fn grpc_web_get_user_with_cors_and_status_trailers() {
    let s = Server::start(&["--demo", "blog"]);
    let c = reqwest::Client::new();
    // GetUserRequest { id: "123" }: field 1, length-delimited.
    let res = c
        .post(format!(
            "http://{}/polyport.collections.UserService/GetUser",
            s.grpc
        ))
        .header("content-type", "application/grpc-web+proto")
        .header("origin", "http://app.example")
        .body(frame(b"\x0a\x03123"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["access-control-allow-origin"], "*");
    let body = res.bytes().await.unwrap();
    let (data, trailers) = unframe(&body);
    assert!(trailers.contains("grpc-status:0"), "{trailers}");
    assert_eq!(data.len(), 1);
    let msg = String::from_utf8_lossy(&data[0]);
    assert!(
        msg.contains("john_doe"),
        "the User message carries the username: {msg:?}"
    );

    // A missing record is NOT_FOUND (5), still HTTP 200 as gRPC-Web wants; an error
    // without messages is "trailers-only", so the status may come as headers.
    let res = c
        .post(format!(
            "http://{}/polyport.collections.UserService/GetUser",
            s.grpc
        ))
        .header("content-type", "application/grpc-web+proto")
        .body(frame(b"\x0a\x04nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let header = res
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_string());
    let body = res.bytes().await.unwrap();
    let (_, trailers) = unframe(&body);
    assert!(
        header.as_deref() == Some("5") || trailers.contains("grpc-status:5"),
        "header {header:?}, trailers {trailers}"
    );
}
