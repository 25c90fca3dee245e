//! HTTP/1.1 client for Janus's JSON API and Prometheus scrapes: hyper's client
//! (already in the graph through tonic) on the run's tokio runtime, one pooled
//! connection per server.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Longest a request may take: Janus's long poll answers within 30 s.
const TIMEOUT: Duration = Duration::from_secs(40);

/// An HTTP server's API: its address and a client that keeps its connections
/// (cheap to clone; needs a tokio runtime).
#[derive(Clone)]
pub(crate) struct HttpApi {
    addr: SocketAddr,
    client: HttpClient,
}

impl std::fmt::Debug for HttpApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HttpApi({})", self.addr)
    }
}

impl HttpApi {
    /// The API at `addr` (plain HTTP).
    pub(crate) fn new(addr: SocketAddr) -> HttpApi {
        let mut c = HttpConnector::new();
        c.set_nodelay(true);
        c.set_connect_timeout(Some(Duration::from_secs(2)));
        HttpApi {
            addr,
            client: Client::builder(TokioExecutor::new()).build(c),
        }
    }

    /// Sends a request and returns the status and the body.
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Bytes), String> {
        let addr = self.addr;
        let payload = body.map(Value::to_string).unwrap_or_default();
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"))
            .header("accept", "application/json");
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(payload)))
            .map_err(|e| format!("request: {e}"))?;
        let fut = async {
            let res = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("{addr}: {e}"))?;
            let status = res.status().as_u16();
            let body = res
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("receive: {e}"))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(TIMEOUT, fut)
            .await
            .map_err(|_| format!("{addr}: no answer within {TIMEOUT:?}"))?
    }

    /// Sends a request and parses the JSON body of a 200 response.
    pub(crate) async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, String> {
        let method = Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
        let (status, body) = self.send(method, path, body).await?;
        if status != 200 {
            return Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&body)));
        }
        serde_json::from_slice(&body).map_err(|e| format!("bad JSON: {e}"))
    }

    /// The text of `GET path` (a 200 answer), e.g. a Prometheus exposition.
    pub(crate) async fn get_text(&self, path: &str) -> Result<String, String> {
        let (status, body) = self.send(Method::GET, path, None).await?;
        if status != 200 {
            return Err(format!("GET {path}: HTTP {status}"));
        }
        String::from_utf8(body.to_vec()).map_err(|e| format!("GET {path}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-shot HTTP server answering `answer` to the first request.
    async fn serve_once(answer: &'static [u8]) -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = vec![0; 4096];
            let _ = s.read(&mut buf).await;
            s.write_all(answer).await.unwrap();
            s.shutdown().await.unwrap();
        });
        addr
    }

    #[tokio::test]
    async fn json_from_plain_and_chunked_answers() {
        let a = serve_once(
            b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\nconnection: close\r\n\r\n{\"a\":1}\n",
        )
        .await;
        let v = HttpApi::new(a)
            .request("POST", "/janus", Some(&serde_json::json!({"x": 1})))
            .await
            .unwrap();
        assert_eq!(v["a"], 1);
        let b = serve_once(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n3\r\n{\"a\r\n4\r\n\":2}\r\n0\r\n\r\n",
        )
        .await;
        assert_eq!(
            HttpApi::new(b).request("GET", "/", None).await.unwrap()["a"],
            2
        );
        let c =
            serve_once(b"HTTP/1.1 503 Busy\r\ncontent-length: 4\r\nconnection: close\r\n\r\nbusy")
                .await;
        let e = HttpApi::new(c).get_text("/metrics").await.unwrap_err();
        assert!(e.contains("503"), "{e}");
    }
}
