//! `load_reference` against a tiny HTTP server on 127.0.0.1 (tests send no other traffic).
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, Request};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use futures_util::stream;
use futures_util::StreamExt;

use super::*;
use crate::imaging::decode::tests::{refused, zero_png};
use crate::imaging::{encode_image, ImageFormat};

const MAX_BYTES: usize = 10_000;

fn sample() -> RgbImage {
    RgbImage::from_fn(24, 16, |x, y| image::Rgb([x as u8 * 10, y as u8 * 15, 99]))
}

fn sample_png() -> Vec<u8> {
    encode_image(&sample(), ImageFormat::Png, None).unwrap()
}

fn local_limits() -> ReferenceLimits {
    ReferenceLimits {
        max_bytes: MAX_BYTES,
        max_pixels: 4096 * 4096,
        allow_private: true,
        timeout: Duration::from_secs(5),
        max_redirects: 3,
    }
}

struct TestServer {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn redirect(to: String) -> Response {
    (StatusCode::FOUND, [(header::LOCATION, to)]).into_response()
}

async fn start_server() -> TestServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    serve(listener)
}

fn serve(listener: tokio::net::TcpListener) -> TestServer {
    let png = Bytes::from(sample_png());
    let bomb = Bytes::from(zero_png(11000, 11000));
    let app = Router::new()
        .route(
            "/img.png",
            get(move || async move { ([(header::CONTENT_TYPE, "image/png")], png) }),
        )
        .route(
            "/redirect/{n}",
            get(|Path(n): Path<usize>| async move {
                match n {
                    0 => redirect("/img.png".into()),
                    _ => redirect(format!("/redirect/{}", n - 1)),
                }
            }),
        )
        .route(
            "/relative/hop",
            get(|| async { redirect("../img.png".into()) }),
        )
        .route(
            "/to-file",
            get(|| async { redirect("file:///etc/passwd".into()) }),
        )
        .route("/big-declared", get(|| async { vec![0u8; MAX_BYTES + 1] }))
        .route(
            "/big-streamed",
            get(|| async {
                // No Content-Length and no end: only the byte cap stops the client.
                let chunks =
                    stream::repeat_with(|| Ok::<_, Infallible>(Bytes::from(vec![0u8; 4096])));
                Body::from_stream(chunks)
            }),
        )
        .route(
            "/slow-body",
            get(|| async {
                let first =
                    stream::once(async { Ok::<_, Infallible>(Bytes::from_static(b"\x89PNG")) });
                let stall = stream::once(async {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    Ok::<_, Infallible>(Bytes::new())
                });
                Body::from_stream(first.chain(stall))
            }),
        )
        .route(
            "/slow-headers",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                "late"
            }),
        )
        .route(
            "/page.html",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "image/png")],
                    "<!DOCTYPE html><p>hi</p>",
                )
            }),
        )
        .route("/bomb.png", get(move || async move { bomb }))
        .route("/not-modified", get(|| async { StatusCode::NOT_MODIFIED }));
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let app = app.layer(middleware::from_fn(move |request: Request, next: Next| {
        counter.fetch_add(1, Ordering::SeqCst);
        next.run(request)
    }));
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    TestServer { addr, hits, task }
}

async fn load_url(url: &str, limits: &ReferenceLimits) -> Result<RgbImage, ImagingError> {
    load_reference(ReferenceInput::Url(url), limits).await
}

#[tokio::test]
async fn fetches_and_decodes_a_png() {
    let server = start_server().await;
    let image = load_url(&server.url("/img.png"), &local_limits())
        .await
        .unwrap();
    assert_eq!(image, sample());
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn host_names_connect_to_the_addresses_that_were_checked() {
    let server = start_server().await;
    let url = format!("http://localhost:{}/img.png", server.addr.port());
    let image = load_url(&url, &local_limits()).await.unwrap();
    assert_eq!(image, sample());
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn the_pinned_client_never_resolves_names_itself() {
    // The server listens on 127.0.0.2 only; `localhost` names 127.0.0.1 / ::1. The request can
    // reach the server only through the pinned address. (127.0.0.2 is loopback on Linux; where
    // it cannot be bound, e.g. macOS without an alias, there is nothing to test.)
    let Ok(listener) = tokio::net::TcpListener::bind("127.0.0.2:0").await else {
        eprintln!("127.0.0.2 cannot be bound here; skipped");
        return;
    };
    let server = serve(listener);
    let client = crate::imaging::fetch::pinned_client(&[server.addr]).unwrap();
    let url = format!("http://localhost:{}/img.png", server.addr.port());
    let response = client.get(url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.bytes().await.unwrap(), sample_png());
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn follows_redirects_up_to_the_limit_and_no_further() {
    let server = start_server().await;
    let image = load_url(&server.url("/redirect/2"), &local_limits())
        .await
        .unwrap();
    assert_eq!(image, sample());
    assert_eq!(server.hits(), 4, "three redirects and the image");

    let err = refused(load_url(&server.url("/redirect/3"), &local_limits()).await);
    assert!(
        matches!(err, ImagingError::TooManyRedirects { limit: 3 }),
        "{err}"
    );
    assert_eq!(
        server.hits(),
        8,
        "stops after the third redirect, before a fourth fetch"
    );

    let none = ReferenceLimits {
        max_redirects: 0,
        ..local_limits()
    };
    let err = refused(load_url(&server.url("/redirect/0"), &none).await);
    assert!(err.to_string().contains("more than 0"), "{err}");

    let image = load_url(&server.url("/relative/hop"), &local_limits())
        .await
        .unwrap();
    assert_eq!(
        image,
        sample(),
        "relative Location resolves against the current URL"
    );
}

#[tokio::test]
async fn a_redirect_to_another_scheme_is_refused() {
    let server = start_server().await;
    let err = refused(load_url(&server.url("/to-file"), &local_limits()).await);
    assert!(
        matches!(&err, ImagingError::SchemeNotAllowed { scheme } if scheme == "file"),
        "{err}"
    );
}

#[tokio::test]
async fn bodies_over_max_bytes_are_refused() {
    let server = start_server().await;
    let err = refused(load_url(&server.url("/big-declared"), &local_limits()).await);
    assert!(
        matches!(err, ImagingError::TooManyBytes { limit: MAX_BYTES, size } if size == MAX_BYTES as u64 + 1),
        "{err}"
    );
    let start = Instant::now();
    let err = refused(load_url(&server.url("/big-streamed"), &local_limits()).await);
    assert!(
        matches!(err, ImagingError::TooManyBytes { limit: MAX_BYTES, size } if size > MAX_BYTES as u64 && size <= MAX_BYTES as u64 + 4096),
        "{err}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn slow_servers_time_out() {
    let server = start_server().await;
    let limits = ReferenceLimits {
        timeout: Duration::from_millis(300),
        ..local_limits()
    };
    for path in ["/slow-body", "/slow-headers"] {
        let start = Instant::now();
        let err = refused(load_url(&server.url(path), &limits).await);
        let elapsed = start.elapsed();
        assert!(matches!(err, ImagingError::Timeout { .. }), "{path}: {err}");
        assert!(err.to_string().contains("0.3 s"), "{err}");
        assert!(
            elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(2),
            "{path}: {elapsed:?}"
        );
    }
}

#[tokio::test]
async fn non_images_bombs_and_error_statuses_are_refused() {
    let server = start_server().await;
    let err = refused(load_url(&server.url("/page.html"), &local_limits()).await);
    assert!(matches!(err, ImagingError::NotAnImage { .. }), "{err}");
    assert!(err.to_string().contains("<!DOCTYPE"), "{err}");

    let limits = ReferenceLimits {
        max_bytes: 1 << 20,
        ..local_limits()
    };
    let err = refused(load_url(&server.url("/bomb.png"), &limits).await);
    assert!(
        matches!(
            err,
            ImagingError::TooManyPixels {
                width: 11000,
                height: 11000,
                ..
            }
        ),
        "{err}"
    );

    let err = refused(load_url(&server.url("/missing"), &local_limits()).await);
    assert!(
        matches!(err, ImagingError::HttpStatus { status: 404 }),
        "{err}"
    );
    let err = refused(load_url(&server.url("/not-modified"), &local_limits()).await);
    assert!(
        matches!(err, ImagingError::HttpStatus { status: 304 }),
        "{err}"
    );
}

#[tokio::test]
async fn private_addresses_are_refused_before_connecting() {
    // A bare listener: it records any connection attempt, not just HTTP requests.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let public_only = ReferenceLimits {
        allow_private: false,
        ..local_limits()
    };
    for url in [
        format!("http://127.0.0.1:{port}/img.png"),
        format!("http://localhost:{port}/img.png"),
        format!("http://[::1]:{port}/img.png"),
        format!("http://[::ffff:127.0.0.1]:{port}/img.png"),
        format!("http://0x7f.1:{port}/img.png"),
    ] {
        let err = refused(load_url(&url, &public_only).await);
        match &err {
            ImagingError::AddressNotPublic { address, .. } => {
                assert!(
                    address.is_loopback() || address.to_string() == "::ffff:127.0.0.1",
                    "{url}: {err}"
                )
            }
            other => panic!("{url}: expected AddressNotPublic, got {other}"),
        }
    }
    let connection = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
    assert!(connection.is_err(), "a connection reached the listener");
}

#[tokio::test]
async fn only_http_urls_are_accepted() {
    for (url, scheme) in [
        ("ftp://127.0.0.1/x.png", "ftp"),
        ("file:///etc/passwd", "file"),
    ] {
        let err = refused(load_url(url, &local_limits()).await);
        assert!(
            matches!(&err, ImagingError::SchemeNotAllowed { scheme: s } if s == scheme),
            "{url}: {err}"
        );
    }
    let err = refused(load_url("not a url", &local_limits()).await);
    assert!(matches!(err, ImagingError::BadUrl { .. }), "{err}");
}

#[tokio::test]
async fn data_url_bytes_are_sniffed_not_trusted() {
    let limits = local_limits();
    let jpeg = encode_image(&sample(), ImageFormat::Jpeg, Some(95)).unwrap();
    let input = ReferenceInput::DataUrl {
        media_type: "image/png",
        bytes: &jpeg,
    };
    let image = load_reference(input, &limits).await.unwrap();
    assert_eq!(
        image.dimensions(),
        (24, 16),
        "JPEG bytes declared as PNG decode as JPEG"
    );

    let png = sample_png();
    let input = ReferenceInput::DataUrl {
        media_type: "text/plain",
        bytes: &png,
    };
    let err = refused(load_reference(input, &limits).await);
    assert!(matches!(err, ImagingError::BadDataUrl { .. }), "{err}");

    let input = ReferenceInput::DataUrl {
        media_type: "image/png",
        bytes: b"<svg></svg>",
    };
    let err = refused(load_reference(input, &limits).await);
    assert!(matches!(err, ImagingError::NotAnImage { .. }), "{err}");

    let small = ReferenceLimits {
        max_bytes: png.len() - 1,
        ..limits
    };
    let input = ReferenceInput::DataUrl {
        media_type: "image/png",
        bytes: &png,
    };
    let err = refused(load_reference(input, &small).await);
    assert!(matches!(err, ImagingError::TooManyBytes { .. }), "{err}");

    let parsed = crate::imaging::parse_data_url(&format!(
        "data:image/png;base64,{}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &png)
    ))
    .unwrap();
    let input = ReferenceInput::DataUrl {
        media_type: &parsed.media_type,
        bytes: &parsed.bytes,
    };
    assert_eq!(
        load_reference(input, &local_limits()).await.unwrap(),
        sample()
    );
}
