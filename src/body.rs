//! Reading a governed request's body: media type, encoding and size are
//! checked before a byte is parsed (DESIGN §2).
//!
//! Compressed or form-encoded bodies are refused rather than decoded: a body
//! that tollgate and the tenant could decode differently is a body that was
//! not judged.

use bytes::Bytes;
use http::{HeaderMap, header};
use http_body_util::{BodyExt, Limited};

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the body exceeds the {limit}-byte limit")]
    TooLarge { limit: u64 },
    #[error(
        "Content-Encoding {0:?} is not accepted; send the JSON body uncompressed (identity encoding)"
    )]
    Encoded(String),
    #[error("{0}")]
    MediaType(String),
    #[error("this operation takes no body")]
    Unexpected,
    #[error("the body could not be read: {0}")]
    Read(String),
    #[error("the body did not arrive within {0:?} (limits.body_timeout)")]
    Timeout(std::time::Duration),
}

/// Checks `Content-Encoding`: absent or `identity`.
pub fn check_encoding(headers: &HeaderMap) -> Result<(), BodyError> {
    for value in headers.get_all(header::CONTENT_ENCODING) {
        let v = String::from_utf8_lossy(value.as_bytes()).trim().to_owned();
        if !v.eq_ignore_ascii_case("identity") {
            return Err(BodyError::Encoded(v));
        }
    }
    Ok(())
}

/// Checks `Content-Type`: `application/json`, with no parameter but
/// `charset=utf-8`.
pub fn check_json_media_type(headers: &HeaderMap) -> Result<(), BodyError> {
    let mut values = headers.get_all(header::CONTENT_TYPE).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(BodyError::MediaType(
            "send exactly one Content-Type: application/json header".into(),
        ));
    };
    let text = value
        .to_str()
        .map_err(|_| BodyError::MediaType("the Content-Type header is not ASCII".into()))?;
    let mut parts = text.split(';');
    let essence = parts.next().unwrap_or_default().trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return Err(BodyError::MediaType(format!(
            "Content-Type {essence:?} is not accepted; send the body as JSON with Content-Type: application/json"
        )));
    }
    for param in parts {
        let (name, value) = param.split_once('=').unwrap_or((param, ""));
        let value = value.trim().trim_matches('"');
        if !(name.trim().eq_ignore_ascii_case("charset") && value.eq_ignore_ascii_case("utf-8")) {
            return Err(BodyError::MediaType(format!(
                "Content-Type parameter {:?} is not accepted; send Content-Type: application/json (charset=utf-8 or none)",
                param.trim()
            )));
        }
    }
    Ok(())
}

/// Reads a whole body of at most `limit` bytes. A declared `Content-Length`
/// over the limit is refused before anything is read.
pub async fn read_limited<B>(headers: &HeaderMap, body: B, limit: u64) -> Result<Bytes, BodyError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(BodyError::TooLarge { limit });
    }
    let max = usize::try_from(limit).unwrap_or(usize::MAX);
    match Limited::new(body, max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(BodyError::TooLarge { limit }),
        Err(e) => Err(BodyError::Read(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(ct: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(ct).expect("ascii"),
        );
        h
    }

    #[test]
    fn media_types() {
        for ok in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            "application/json;charset=\"UTF-8\"",
        ] {
            assert!(check_json_media_type(&headers(ok)).is_ok(), "{ok}");
        }
        for bad in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/json; charset=latin1",
            "application/json; foo=bar",
            "application/json-patch+json",
        ] {
            assert!(check_json_media_type(&headers(bad)).is_err(), "{bad}");
        }
        assert!(check_json_media_type(&HeaderMap::new()).is_err());
    }

    #[test]
    fn encodings() {
        let mut h = HeaderMap::new();
        assert!(check_encoding(&h).is_ok());
        h.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        assert!(check_encoding(&h).is_ok());
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        assert!(check_encoding(&h).is_err());
    }

    #[tokio::test]
    async fn limits() {
        let body = http_body_util::Full::new(Bytes::from_static(b"0123456789"));
        let got = read_limited(&HeaderMap::new(), body.clone(), 10)
            .await
            .expect("fits");
        assert_eq!(&got[..], b"0123456789");
        assert!(matches!(
            read_limited(&HeaderMap::new(), body, 9).await,
            Err(BodyError::TooLarge { limit: 9 })
        ));
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("100"));
        let empty = http_body_util::Empty::<Bytes>::new();
        assert!(matches!(
            read_limited(&h, empty, 10).await,
            Err(BodyError::TooLarge { .. })
        ));
    }
}
