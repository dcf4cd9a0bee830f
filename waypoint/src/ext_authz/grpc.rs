//! `envoy.service.auth.v3.Authorization/Check`: the check describes the
//! caller, the destination and the request; the answer's status code 0
//! allows (with the changes its `ok_response` asks for), any other denies
//! (with the answer its `denied_response` gives, 403 by default).

use std::{collections::BTreeMap, net::IpAddr};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode, request::Parts};
use tracing::debug;
use warren_api::ext_authz::{
    AttributeContext, CheckRequest, CheckResponse, attribute_context,
    check_response::HttpResponse,
    envoy::config::core::v3::{
        Address, HeaderValueOption, SocketAddress, address,
        header_value_option::HeaderAppendAction, socket_address,
    },
};

use super::{Changes, Mode, Verdict, protected};

/// The method's path, as gRPC names it on the wire.
pub const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

/// One end of the checked request.
pub struct Peer<'a> {
    pub ip: IpAddr,
    /// 0 when not known (a caller's port is not known past its ztunnel).
    pub port: u16,
    /// `spiffe://…`; empty when not known.
    pub principal: &'a str,
    /// The destination's service host; empty for the caller.
    pub service: &'a str,
}

/// The HTTP request a check is about.
pub struct HttpAttributes<'a> {
    pub id: &'a str,
    pub parts: &'a Parts,
    pub host: &'a str,
    /// The body (whole or its first bytes) when the provider asks for it.
    pub body: Option<&'a [u8]>,
    /// Put the body in `raw_body`, as bytes, rather than in `body`, as text.
    pub pack_as_bytes: bool,
}

/// Builds the check for a request (or, without `http`, a connection).
pub fn check(
    source: &Peer<'_>,
    destination: &Peer<'_>,
    http: Option<&HttpAttributes<'_>>,
) -> CheckRequest {
    let peer = |p: &Peer<'_>| attribute_context::Peer {
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                protocol: socket_address::Protocol::Tcp as i32,
                address: p.ip.to_string(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(p.port))),
            })),
        }),
        service: p.service.to_owned(),
        labels: BTreeMap::new(),
        principal: p.principal.to_owned(),
        certificate: String::new(),
    };
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(peer(source)),
            destination: Some(peer(destination)),
            request: http.map(|h| attribute_context::Request {
                http: Some(http_request(h)),
            }),
            context_extensions: BTreeMap::new(),
            tls_session: None,
        }),
    }
}

fn http_request(h: &HttpAttributes<'_>) -> attribute_context::HttpRequest {
    let parts = h.parts;
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    // One entry per name, repeated values joined with ",", with the
    // pseudo-headers Envoy's map carries.
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    headers.insert(":authority".into(), h.host.to_owned());
    headers.insert(":method".into(), parts.method.to_string());
    headers.insert(":path".into(), path.to_owned());
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        headers
            .entry(name.as_str().to_owned())
            .and_modify(|joined| {
                joined.push(',');
                joined.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    let size = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<i64>().ok())
        .unwrap_or(-1);
    let (body, raw_body) = match h.body {
        Some(bytes) if h.pack_as_bytes => (String::new(), bytes.to_vec()),
        Some(bytes) => (String::from_utf8_lossy(bytes).into_owned(), Vec::new()),
        None => (String::new(), Vec::new()),
    };
    attribute_context::HttpRequest {
        id: h.id.to_owned(),
        method: parts.method.to_string(),
        headers,
        path: path.to_owned(),
        host: h.host.to_owned(),
        scheme: "http".into(),
        query: String::new(),
        fragment: String::new(),
        size,
        protocol: match parts.version {
            http::Version::HTTP_10 => "HTTP/1.0",
            http::Version::HTTP_2 => "HTTP/2",
            _ => "HTTP/1.1",
        }
        .into(),
        body,
        raw_body,
    }
}

/// Reads a CheckResponse.
pub fn verdict(answer: CheckResponse) -> Verdict {
    let code = answer.status.as_ref().map_or(0, |s| s.code);
    if code == 0 {
        let mut changes = Changes::default();
        if let Some(HttpResponse::OkResponse(ok)) = answer.http_response {
            for option in &ok.headers {
                let Some((name, value)) = header(option) else {
                    continue;
                };
                if protected(&name) {
                    continue;
                }
                if option.append == Some(true) {
                    changes.append.push((name, value));
                } else {
                    changes.set.push((name, value));
                }
            }
            for name in &ok.headers_to_remove {
                if let Ok(name) = HeaderName::from_bytes(name.as_bytes())
                    && !protected(&name)
                {
                    changes.remove.push(name);
                }
            }
            for option in &ok.response_headers_to_add {
                let Some((name, value)) = header(option) else {
                    continue;
                };
                let mode = match option.append {
                    Some(true) => Mode::Add,
                    Some(false) => Mode::Set,
                    None => match HeaderAppendAction::try_from(option.append_action) {
                        Ok(HeaderAppendAction::AddIfAbsent) => Mode::AddIfAbsent,
                        Ok(HeaderAppendAction::OverwriteIfExistsOrAdd) => Mode::Set,
                        Ok(HeaderAppendAction::OverwriteIfExists) => Mode::OverwriteIfExists,
                        _ => Mode::Add,
                    },
                };
                changes.response.push((name, value, mode));
            }
            changes.query_set = ok
                .query_parameters_to_set
                .iter()
                .map(|q| (q.key.clone(), q.value.clone()))
                .collect();
            changes.query_remove = ok.query_parameters_to_remove.clone();
        }
        return Verdict::Allow(changes);
    }
    let mut response = Response::new(Bytes::new());
    *response.status_mut() = StatusCode::FORBIDDEN;
    if let Some(HttpResponse::DeniedResponse(denied)) = answer.http_response {
        if let Some(status) = denied
            .status
            .and_then(|s| u16::try_from(s.code).ok())
            .and_then(|code| StatusCode::from_u16(code).ok())
            .filter(|code| code.as_u16() >= 200)
        {
            *response.status_mut() = status;
        }
        for option in &denied.headers {
            // Envoy leaves `append` ones out of a denial.
            if option.append == Some(true) {
                continue;
            }
            if let Some((name, value)) = header(option)
                && !super::http::framing(&name)
            {
                response.headers_mut().append(name, value);
            }
        }
        *response.body_mut() = Bytes::from(denied.body);
    }
    Verdict::Deny(response)
}

/// A header of an answer; `None` (and a debug line) for one HTTP cannot carry.
fn header(option: &HeaderValueOption) -> Option<(HeaderName, HeaderValue)> {
    let h = option.header.as_ref()?;
    let name = HeaderName::from_bytes(h.key.as_bytes()).ok();
    let value = if h.value.is_empty() && !h.raw_value.is_empty() {
        HeaderValue::from_bytes(&h.raw_value).ok()
    } else {
        HeaderValue::from_str(&h.value).ok()
    };
    match (name, value) {
        (Some(name), Some(value)) => Some((name, value)),
        _ => {
            debug!(name = %h.key, "an authorizer's header that HTTP cannot carry, left out");
            None
        }
    }
}
