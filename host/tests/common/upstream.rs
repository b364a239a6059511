//! A real HTTP/1.1 upstream on 127.0.0.1 for the outbound tests (hyper, on
//! a thread and runtime of its own so it outlives any one test's runtime).
//!
//! - `/ok`: 200 `hello from upstream`
//! - `/echo`: the request's method, Host header, body and headers as JSON
//! - `/redirect?to=URL`: 302 to URL
//! - `/loop`: 302 to itself
//! - `/big?n=BYTES`: a body of that many bytes
//! - `/delay?ms=N`: `after N ms`, after N ms (at most 10 s)
//! - `/slow`: waits 30 s before answering

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

pub struct Upstream {
    pub addr: SocketAddr,
}

impl Upstream {
    /// `http://127.0.0.1:PORT`.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

/// Start an upstream; it runs until the test process exits.
pub fn start() -> Upstream {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind upstream");
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service_fn(answer))
                        .await;
                });
            }
        });
    });
    Upstream { addr }
}

fn query(request: &hyper::Request<hyper::body::Incoming>, name: &str) -> Option<String> {
    let query = request.uri().query()?;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

async fn answer(
    request: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
    let reply = |status: u16, body: Vec<u8>| {
        hyper::Response::builder()
            .status(status)
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    };
    let path = request.uri().path().to_owned();
    Ok(match path.as_str() {
        "/ok" => reply(200, b"hello from upstream".to_vec()),
        "/echo" => {
            let method = request.method().to_string();
            let headers: Vec<(String, String)> = request
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let host = request
                .headers()
                .get("host")
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            let body = request
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let echo = serde_json::json!({
                "method": method,
                "host": host,
                "headers": headers,
                "body": String::from_utf8_lossy(&body),
            });
            reply(200, echo.to_string().into_bytes())
        }
        "/redirect" | "/loop" => {
            let to = if path == "/loop" {
                "/loop".to_owned()
            } else {
                query(&request, "to").unwrap_or_default()
            };
            hyper::Response::builder()
                .status(302)
                .header("location", to)
                .body(Full::new(Bytes::new()))
                .unwrap()
        }
        "/big" => {
            let n: usize = query(&request, "n")
                .and_then(|n| n.parse().ok())
                .unwrap_or(1 << 20);
            reply(200, vec![b'x'; n])
        }
        "/delay" => {
            let ms: u64 = query(&request, "ms")
                .and_then(|n| n.parse().ok())
                .unwrap_or(100)
                .min(10_000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            reply(200, format!("after {ms} ms").into_bytes())
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            reply(200, b"finally".to_vec())
        }
        "/w" => {
            let auth = request
                .headers()
                .get("authorization")
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_default();
            let city = query(&request, "q").unwrap_or_default();
            let body = serde_json::json!({"city": city, "sky": "clear", "authorization": auth});
            reply(200, body.to_string().into_bytes())
        }
        _ => reply(404, b"not found".to_vec()),
    })
}
