//! Fetching a reference image over http(s) without letting the URL reach internal services:
//! every hop's host is resolved here, every resolved address must be public (unless allowed),
//! and the connection is pinned to those checked addresses so a second DNS answer cannot
//! redirect it (DNS rebinding). Redirects are followed by hand so each hop is checked too.
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::LOCATION;
use reqwest::redirect::Policy;
use reqwest::{Client, Response, StatusCode, Url};

use super::{is_public_address, ImagingError, ReferenceLimits};

/// A URL's host: reqwest does not re-export the url crate's `Host`, so this mirrors it.
enum Host<'a> {
    Domain(&'a str),
    Ip(IpAddr),
}

fn host_of(url: &Url) -> Option<Host<'_>> {
    let text = url.host_str()?;
    // `host_str` brackets IPv6 literals; the url crate has already normalised IPv4 forms.
    let unbracketed = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    Some(match unbracketed.parse() {
        Ok(ip) => Host::Ip(ip),
        Err(_) => Host::Domain(text),
    })
}

/// Fetches `url` within `limits.timeout` (DNS, connections, redirects and body together) and
/// returns at most `limits.max_bytes` bytes of body.
pub(super) async fn fetch_reference_bytes(
    url: &str,
    limits: &ReferenceLimits,
) -> Result<Vec<u8>, ImagingError> {
    let allowed = |ip: IpAddr| limits.allow_private || is_public_address(ip);
    fetch_under_policy(url, limits, &allowed).await
}

/// Which addresses may be connected to (the server's policy is [`is_public_address`] unless
/// `allow_private`; tests narrow it to single loopback addresses).
type AddressPolicy<'a> = &'a (dyn Fn(IpAddr) -> bool + Sync);

async fn fetch_under_policy(
    url: &str,
    limits: &ReferenceLimits,
    allowed: AddressPolicy<'_>,
) -> Result<Vec<u8>, ImagingError> {
    match tokio::time::timeout(
        limits.timeout,
        fetch_following_redirects(url, limits, allowed),
    )
    .await
    {
        Ok(result) => result,
        Err(_) => Err(ImagingError::Timeout {
            timeout: limits.timeout,
        }),
    }
}

async fn fetch_following_redirects(
    url: &str,
    limits: &ReferenceLimits,
    allowed: AddressPolicy<'_>,
) -> Result<Vec<u8>, ImagingError> {
    let mut current = Url::parse(url).map_err(|e| ImagingError::BadUrl {
        url: url.to_string(),
        reason: e.to_string(),
    })?;
    let mut redirects = 0;
    loop {
        check_scheme(&current)?;
        let addresses = resolve_checked(&current, allowed).await?;
        let response = pinned_client(&addresses)?
            .get(current.clone())
            .send()
            .await
            .map_err(|e| fetch_failed(&e))?;
        let status = response.status();
        if let Some(location) = redirect_location(&response) {
            if redirects >= limits.max_redirects {
                return Err(ImagingError::TooManyRedirects {
                    limit: limits.max_redirects,
                });
            }
            redirects += 1;
            current = current.join(&location).map_err(|e| ImagingError::BadUrl {
                url: location.clone(),
                reason: format!("redirect target: {e}"),
            })?;
            continue;
        }
        if !status.is_success() {
            return Err(ImagingError::HttpStatus {
                status: status.as_u16(),
            });
        }
        return read_capped_body(response, limits.max_bytes).await;
    }
}

fn check_scheme(url: &Url) -> Result<(), ImagingError> {
    match url.scheme() {
        "http" | "https" => Ok(()),
        other => Err(ImagingError::SchemeNotAllowed {
            scheme: other.to_string(),
        }),
    }
}

/// The addresses `url`'s host stands for, each checked with `allowed`. One refused address
/// refuses the whole host: a name that resolves to a mix must not be let through on a lucky pick.
async fn resolve_checked(
    url: &Url,
    allowed: AddressPolicy<'_>,
) -> Result<Vec<SocketAddr>, ImagingError> {
    let port = url.port_or_known_default().unwrap_or(80);
    let (host, addresses) = match host_of(url) {
        None => {
            return Err(ImagingError::BadUrl {
                url: url.to_string(),
                reason: "it has no host".into(),
            })
        }
        Some(Host::Ip(ip)) => (ip.to_string(), vec![SocketAddr::new(ip, port)]),
        Some(Host::Domain(domain)) => {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((domain, port))
                .await
                .map_err(|e| ImagingError::FetchFailed {
                    reason: format!("cannot resolve host {domain:?}: {e}"),
                })?
                .collect();
            if found.is_empty() {
                return Err(ImagingError::FetchFailed {
                    reason: format!("host {domain:?} has no addresses"),
                });
            }
            (domain.to_string(), found)
        }
    };
    if let Some(address) = addresses
        .iter()
        .map(SocketAddr::ip)
        .find(|&ip: &IpAddr| !allowed(ip))
    {
        return Err(ImagingError::AddressNotPublic { host, address });
    }
    Ok(addresses)
}

/// A client that can connect only to `addresses`: its resolver answers every name with them, so
/// neither a second DNS answer nor a host spelling we did not foresee reaches anything else. It
/// follows no redirects and ignores proxy settings (a proxy would resolve the name itself).
pub(super) fn pinned_client(addresses: &[SocketAddr]) -> Result<Client, ImagingError> {
    Client::builder()
        .redirect(Policy::none())
        .no_proxy()
        .dns_resolver(Arc::new(PinnedResolver(addresses.to_vec())))
        .user_agent(concat!("imago/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| fetch_failed(&e))
}

struct PinnedResolver(Vec<SocketAddr>);

impl Resolve for PinnedResolver {
    fn resolve(&self, _name: Name) -> Resolving {
        let addresses = self.0.clone();
        Box::pin(async move { Ok(Box::new(addresses.into_iter()) as Addrs) })
    }
}

/// The `Location` of a redirect we follow (301, 302, 303, 307, 308); other 3xx are statuses.
fn redirect_location(response: &Response) -> Option<String> {
    let follows = matches!(
        response.status(),
        StatusCode::MOVED_PERMANENTLY
            | StatusCode::FOUND
            | StatusCode::SEE_OTHER
            | StatusCode::TEMPORARY_REDIRECT
            | StatusCode::PERMANENT_REDIRECT
    );
    if !follows {
        return None;
    }
    let location = response.headers().get(LOCATION)?.to_str().ok()?;
    Some(location.to_string())
}

/// Reads the body, refusing a declared `Content-Length` over `max_bytes` before reading and
/// stopping as soon as more than `max_bytes` have arrived.
async fn read_capped_body(
    mut response: Response,
    max_bytes: usize,
) -> Result<Vec<u8>, ImagingError> {
    if let Some(declared) = response.content_length() {
        if declared > max_bytes as u64 {
            return Err(ImagingError::TooManyBytes {
                limit: max_bytes,
                size: declared,
            });
        }
    }
    let capacity = response
        .content_length()
        .map_or(0, |n| n as usize)
        .min(max_bytes);
    let mut body = Vec::with_capacity(capacity);
    while let Some(chunk) = response.chunk().await.map_err(|e| fetch_failed(&e))? {
        if body.len() + chunk.len() > max_bytes {
            return Err(ImagingError::TooManyBytes {
                limit: max_bytes,
                size: (body.len() + chunk.len()) as u64,
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// reqwest's top-level message rarely says why ("error sending request"): add the causes.
fn fetch_failed(error: &reqwest::Error) -> ImagingError {
    let mut reason = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        reason.push_str(": ");
        reason.push_str(&cause.to_string());
        source = cause.source();
    }
    ImagingError::FetchFailed { reason }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A redirect is checked like the first URL: a server we may reach (127.0.0.1) redirecting
    /// to one we may not (127.0.0.2, standing in for an internal address) is refused before any
    /// connection is made to it.
    #[tokio::test]
    async fn every_redirect_hop_is_checked_before_connecting() {
        let canary = TcpListener::bind("127.0.0.2:0").await.unwrap();
        let target = format!(
            "http://127.0.0.2:{}/x.png",
            canary.local_addr().unwrap().port()
        );
        let allowed_host = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/start", allowed_host.local_addr().unwrap());
        let redirector = tokio::spawn(async move {
            let (mut socket, _) = allowed_host.accept().await.unwrap();
            let mut request = [0u8; 1024];
            let _ = socket.read(&mut request).await;
            let answer = format!(
                "HTTP/1.1 302 Found\r\nLocation: {target}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            socket.write_all(answer.as_bytes()).await.unwrap();
        });
        let only_first = |ip: IpAddr| ip == IpAddr::from([127, 0, 0, 1]);
        let limits = ReferenceLimits {
            allow_private: true,
            ..ReferenceLimits::default()
        };
        let err = fetch_under_policy(&url, &limits, &only_first)
            .await
            .expect_err("the redirect target is not allowed");
        assert!(
            matches!(&err, ImagingError::AddressNotPublic { address, .. } if address.to_string() == "127.0.0.2"),
            "{err}"
        );
        redirector.await.unwrap();
        let reached = tokio::time::timeout(Duration::from_millis(200), canary.accept()).await;
        assert!(reached.is_err(), "a connection reached the redirect target");
    }
}
