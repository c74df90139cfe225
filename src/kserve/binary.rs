//! The binary tensor data extension: raw little-endian tensors after the
//! JSON header, BYTES elements as 4-byte little-endian length + bytes.

use super::infer::bad;
use crate::error::ServeError;
use axum::body::Bytes;
use axum::http::HeaderMap;

pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// Split a request body into its JSON header and the binary part that
/// follows it (empty without `Inference-Header-Content-Length`).
pub fn split_body(headers: &HeaderMap, body: Bytes) -> Result<(Bytes, Bytes), ServeError> {
    let Some(v) = headers.get(HEADER_LENGTH) else {
        return Ok((body, Bytes::new()));
    };
    let len = v
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .ok_or_else(|| ServeError::BadHeader {
            name: "inference-header-content-length",
            reason: "not a non-negative integer".into(),
        })?;
    if len > body.len() {
        return Err(ServeError::BadHeader {
            name: "inference-header-content-length",
            reason: format!("{len} is larger than the body ({} bytes)", body.len()),
        });
    }
    let rest = body.slice(len..);
    let mut head = body;
    head.truncate(len);
    Ok((head, rest))
}

/// Take the next `size` bytes of the binary part, starting at `*offset`.
pub fn take(buf: &Bytes, offset: &mut usize, size: usize) -> Result<Bytes, ServeError> {
    let end = offset
        .checked_add(size)
        .filter(|e| *e <= buf.len())
        .ok_or_else(|| {
            bad(
                "binary_data_size",
                format!(
                    "input needs {size} bytes at offset {}, but the binary part has only {} bytes",
                    offset,
                    buf.len()
                ),
            )
        })?;
    let out = buf.slice(*offset..end);
    *offset = end;
    Ok(out)
}

/// Little-endian FP32 elements.
pub fn f32_from_le(buf: &[u8]) -> Result<Vec<f32>, ServeError> {
    if !buf.len().is_multiple_of(4) {
        return Err(bad(
            "binary_data_size",
            format!("{} bytes is not a whole number of FP32 elements", buf.len()),
        ));
    }
    Ok(buf
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

pub fn f32_to_le(data: &[f32]) -> Vec<u8> {
    data.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// BYTES elements: each a 4-byte little-endian length, then the bytes.
pub fn bytes_elements(buf: &Bytes) -> Result<Vec<Bytes>, ServeError> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < buf.len() {
        let len_bytes = take(buf, &mut at, 4)?;
        let len = u32::from_le_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]);
        out.push(take(buf, &mut at, len as usize)?);
    }
    Ok(out)
}

pub fn bytes_to_le(items: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for s in items {
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_elements_round_trip_and_reject_truncation() {
        let enc = bytes_to_le(&["ab".into(), "".into(), "xyz".into()]);
        let got = bytes_elements(&Bytes::from(enc.clone())).unwrap();
        assert_eq!(got, vec![&b"ab"[..], &b""[..], &b"xyz"[..]]);
        assert!(bytes_elements(&Bytes::from(enc[..enc.len() - 1].to_vec())).is_err());
        assert!(bytes_elements(&Bytes::from_static(&[1, 0])).is_err());
        assert!(bytes_elements(&Bytes::from_static(&[255, 255, 255, 255])).is_err());
    }

    #[test]
    fn f32_round_trip_and_split() {
        let x = [1.5f32, -2.0, 0.25];
        assert_eq!(f32_from_le(&f32_to_le(&x)).unwrap(), x);
        assert!(f32_from_le(&[0, 0, 0]).is_err());
        let mut h = HeaderMap::new();
        h.insert(HEADER_LENGTH, "2".parse().unwrap());
        let (a, b) = split_body(&h, Bytes::from_static(b"{}xyz")).unwrap();
        assert_eq!((&a[..], &b[..]), (&b"{}"[..], &b"xyz"[..]));
        h.insert(HEADER_LENGTH, "9".parse().unwrap());
        assert!(split_body(&h, Bytes::from_static(b"{}")).is_err());
        let mut at = 0;
        assert!(take(&Bytes::from_static(b"ab"), &mut at, 3).is_err());
    }
}
