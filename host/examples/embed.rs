//! Embedding pycage in your own hyper service, without the pycage server.
//!
//! ```sh
//! cargo run --example embed -- fixtures/hello/hello.py 127.0.0.1:3000
//! curl http://127.0.0.1:3000/hello/ada
//! ```
//!
//! The pattern: one `Runtime` per process, `load` each handler once (blocking:
//! a cache miss builds the sandbox image), then call `Handler::dispatch` from
//! any task: every call runs in a fresh instance. `Exchange::response()` is
//! the handler's response or, when a limit or the guest failed, the host's
//! error response.

use std::convert::Infallible;
use std::path::PathBuf;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use pycage::{Cache, Handler, LoadOptions, Request, Runtime};
use tokio::net::TcpListener;

/// Translate one HTTP request into a sandboxed dispatch and back.
async fn handle(
    handler: Handler,
    request: hyper::Request<Incoming>,
) -> hyper::Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    // Bound what we buffer by the handler's own request limit.
    let Ok(body) = Limited::new(body, handler.limits().max_request_body)
        .collect()
        .await
    else {
        return plain(413, "request body too large");
    };
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let Ok(mut sandboxed) = Request::new(parts.method.as_str(), target) else {
        return plain(400, "bad request target");
    };
    for (name, value) in &parts.headers {
        sandboxed
            .headers
            .push((name.to_string(), value.as_bytes().to_vec()));
    }
    sandboxed.body = body.to_bytes().to_vec();

    let exchange = handler.dispatch(sandboxed).await;
    if let Err(error) = &exchange.result {
        eprintln!("pycage: {error}");
    }
    let response = exchange.response();
    let mut builder = hyper::Response::builder().status(response.status);
    for (name, value) in &response.headers {
        builder = builder.header(name.as_str(), value.as_slice());
    }
    builder
        .body(Full::new(Bytes::from(response.body)))
        .unwrap_or_else(|_| plain(500, "invalid response"))
}

fn plain(status: u16, text: &'static str) -> hyper::Response<Full<Bytes>> {
    let mut response = hyper::Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = hyper::StatusCode::from_u16(status).expect("valid status");
    response
}

/// Accept connections forever, one task per connection.
async fn serve(handler: Handler, listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let handler = handler.clone();
        let service = service_fn(move |request| {
            let handler = handler.clone();
            async move { Ok::<_, Infallible>(handle(handler, request).await) }
        });
        tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let handler_path = PathBuf::from(
        args.next()
            .unwrap_or_else(|| "fixtures/hello/hello.py".into()),
    );
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:3000".into());

    let runtime = Runtime::new(Cache::new(Cache::default_root()?))?;
    let handler = runtime.load(&handler_path, &LoadOptions::default(), &|_| {})?;
    tokio::runtime::Runtime::new()?.block_on(async {
        let listener = TcpListener::bind(&listen).await?;
        println!(
            "serving {} on http://{}",
            handler_path.display(),
            listener.local_addr()?
        );
        serve(handler, listener).await;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache() -> Cache {
        // Share the integration tests' cache so the fixture is built once per run.
        let tmp = option_env!("CARGO_TARGET_TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/tmp"));
        Cache::new(tmp.join("pycage-test-cache"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn serves_the_hello_fixture_over_http() {
        let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/hello/hello.py");
        let runtime = Runtime::new(cache()).unwrap();
        let handler = tokio::task::block_in_place(|| {
            runtime.load(&fixture, &LoadOptions::default(), &|_| {})
        })
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(handler, listener));

        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        let request = hyper::Request::builder()
            .uri("/hello/embedder")
            .header("host", "localhost")
            .header("user-agent", "example-test")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            &body[..],
            br#"{"hello": "embedder", "agent": "example-test"}"#
        );
    }
}
