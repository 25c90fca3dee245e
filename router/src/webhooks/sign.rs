//! Webhook signatures, as in the Standard Webhooks specification: the
//! signed content is `{webhook-id}.{webhook-timestamp}.{body}`, the
//! signature HMAC-SHA256 with the secret, sent base64-encoded as
//! `webhook-signature: v1,<base64>`.

use aws_lc_rs::hmac;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;

fn key(secret: &[u8]) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, secret)
}

fn content(id: &str, timestamp: u64, body: &[u8]) -> Vec<u8> {
    let mut c = Vec::with_capacity(id.len() + 24 + body.len());
    c.extend_from_slice(id.as_bytes());
    c.push(b'.');
    c.extend_from_slice(timestamp.to_string().as_bytes());
    c.push(b'.');
    c.extend_from_slice(body);
    c
}

/// The `webhook-signature` header value of a delivery.
pub fn sign(secret: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    let tag = hmac::sign(&key(secret), &content(id, timestamp, body));
    format!("v1,{}", STANDARD.encode(tag.as_ref()))
}

/// Whether `header` (space-separated `v1,<base64>` entries) holds a valid
/// signature of the delivery; compares in constant time.
pub fn verify(secret: &[u8], id: &str, timestamp: u64, body: &[u8], header: &str) -> bool {
    let k = key(secret);
    let msg = content(id, timestamp, body);
    header.split(' ').any(|sig| {
        sig.strip_prefix("v1,")
            .and_then(|b| STANDARD.decode(b).ok())
            .is_some_and(|tag| hmac::verify(&k, &msg, &tag).is_ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_and_any_change_breaks_them() {
        let secret = b"a-secret-of-the-api-key";
        let sig = sign(secret, "msg_1", 1_700_000_000, b"{\"a\":1}");
        assert!(sig.starts_with("v1,"));
        assert!(verify(secret, "msg_1", 1_700_000_000, b"{\"a\":1}", &sig));
        assert!(!verify(secret, "msg_1", 1_700_000_000, b"{\"a\":2}", &sig));
        assert!(!verify(secret, "msg_2", 1_700_000_000, b"{\"a\":1}", &sig));
        assert!(!verify(secret, "msg_1", 1_700_000_001, b"{\"a\":1}", &sig));
        assert!(!verify(
            b"another-secret-entirely",
            "msg_1",
            1_700_000_000,
            b"{\"a\":1}",
            &sig
        ));
        // Several signatures (key rotation): any valid one passes.
        assert!(verify(
            secret,
            "msg_1",
            1_700_000_000,
            b"{\"a\":1}",
            &format!("v1,AAAA {sig}")
        ));
    }

    #[test]
    fn matches_a_known_hmac_sha256() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let k = key(b"Jefe");
        let tag = hmac::sign(&k, b"what do ya want for nothing?");
        let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
