//! `kubernetes.io/tls` Secrets from a PEM bundle: the certificate chain under `tls.crt`, the
//! private key under `tls.key`, re-encoded as upstream does (PKCS#1 for RSA, SEC1 for EC).

use base64::Engine as _;

/// Why a bundle cannot be split. Messages never include key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    /// The file holds no PEM block at all, or a malformed one.
    #[error("{0}")]
    Pem(String),
    /// No `CERTIFICATE` block for `tls.crt`.
    #[error(
        "no CERTIFICATE PEM block found for tls.crt (PKCS#12/PFX bundles are not supported; \
         have the provider return PEM)"
    )]
    NoCertificate,
    /// No key block for `tls.key`.
    #[error("no private key PEM block found for tls.key")]
    NoKey,
    /// The key is encrypted or in an encoding we cannot re-encode.
    #[error("the private key for tls.key cannot be used: {0}")]
    Key(String),
}

/// One PEM block: its label and DER bytes.
struct Block {
    label: String,
    der: Vec<u8>,
}

/// The `CERTIFICATE` blocks of `bundle`, in order, as PEM.
pub fn certificates(bundle: &[u8]) -> Result<Vec<u8>, TlsError> {
    let pem: String = parse(bundle)?
        .into_iter()
        .filter(|b| b.label == "CERTIFICATE")
        .map(|b| encode(&b.label, &b.der))
        .collect();
    if pem.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    Ok(pem.into_bytes())
}

/// The last non-certificate block of `bundle`, as an `RSA PRIVATE KEY` or `EC PRIVATE KEY`
/// when it is one of those in PKCS#8 form; other PKCS#8 keys (Ed25519) stay as they are.
pub fn private_key(bundle: &[u8]) -> Result<Vec<u8>, TlsError> {
    let key = parse(bundle)?
        .into_iter()
        .rfind(|b| b.label != "CERTIFICATE")
        .ok_or(TlsError::NoKey)?;
    let (label, der) = match key.label.as_str() {
        "RSA PRIVATE KEY" | "EC PRIVATE KEY" => (key.label, key.der),
        "PRIVATE KEY" => from_pkcs8(&key.der)?,
        "ENCRYPTED PRIVATE KEY" => {
            return Err(TlsError::Key(
                "it is encrypted; have the provider return an unencrypted key".to_owned(),
            ));
        }
        other => {
            return Err(TlsError::Key(format!(
                "a {other:?} PEM block is not a private key"
            )));
        }
    };
    Ok(encode(&label, &der).into_bytes())
}

fn parse(bundle: &[u8]) -> Result<Vec<Block>, TlsError> {
    let text = std::str::from_utf8(bundle)
        .map_err(|_| TlsError::Pem("the file is not PEM text".to_owned()))?;
    let mut blocks = Vec::new();
    let mut lines = text.lines().map(str::trim);
    while let Some(line) = lines.next() {
        let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        else {
            continue;
        };
        let end = format!("-----END {label}-----");
        let mut body = String::new();
        let mut closed = false;
        for line in lines.by_ref() {
            if line == end {
                closed = true;
                break;
            }
            if line.contains(':') {
                return Err(TlsError::Key(format!(
                    "the {label} block has PEM headers (an encrypted legacy key)"
                )));
            }
            body.push_str(line);
        }
        if !closed {
            return Err(TlsError::Pem(format!(
                "the {label} PEM block is not closed"
            )));
        }
        let der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|_| TlsError::Pem(format!("the {label} PEM block is not valid base64")))?;
        blocks.push(Block {
            label: label.to_owned(),
            der,
        });
    }
    if blocks.is_empty() {
        return Err(TlsError::Pem("the file holds no PEM block".to_owned()));
    }
    Ok(blocks)
}

fn encode(label: &str, der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const OCTET_STRING: u8 = 0x04;
const OID: u8 = 0x06;
const CONTEXT_0: u8 = 0xa0;
/// 1.2.840.113549.1.1.1
const RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
/// 1.2.840.10045.2.1
const EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];

/// Unwraps a PKCS#8 `PrivateKeyInfo` into PKCS#1 (RSA) or SEC1 (EC, with its curve).
fn from_pkcs8(der: &[u8]) -> Result<(String, Vec<u8>), TlsError> {
    let malformed = || TlsError::Key("the PKCS#8 structure is malformed".to_owned());
    let (info, _) = element(der, SEQUENCE).ok_or_else(malformed)?;
    let (_version, rest) = element(info, INTEGER).ok_or_else(malformed)?;
    let (algorithm, rest) = element(rest, SEQUENCE).ok_or_else(malformed)?;
    let (key, _) = element(rest, OCTET_STRING).ok_or_else(malformed)?;
    let (oid, params) = element(algorithm, OID).ok_or_else(malformed)?;
    if oid == RSA_ENCRYPTION {
        return Ok(("RSA PRIVATE KEY".to_owned(), key.to_vec()));
    }
    if oid == EC_PUBLIC_KEY {
        let (curve, _) = element(params, OID).ok_or_else(malformed)?;
        return Ok(("EC PRIVATE KEY".to_owned(), sec1_with_curve(key, curve)?));
    }
    Ok(("PRIVATE KEY".to_owned(), der.to_vec()))
}

/// An `ECPrivateKey` with its `[0] parameters` set: PKCS#8 leaves them out because they are
/// in the algorithm identifier, and a SEC1 key without them names no curve.
fn sec1_with_curve(key: &[u8], curve: &[u8]) -> Result<Vec<u8>, TlsError> {
    let malformed = || TlsError::Key("the EC private key is malformed".to_owned());
    let (inner, _) = element(key, SEQUENCE).ok_or_else(malformed)?;
    let (version, rest) = raw_element(inner).ok_or_else(malformed)?;
    let (private, rest) = raw_element(rest).ok_or_else(malformed)?;
    if rest.first() == Some(&CONTEXT_0) {
        return Ok(key.to_vec());
    }
    let oid = tlv(OID, curve);
    let mut body = Vec::new();
    body.extend_from_slice(version);
    body.extend_from_slice(private);
    body.extend_from_slice(&tlv(CONTEXT_0, &oid));
    body.extend_from_slice(rest);
    Ok(tlv(SEQUENCE, &body))
}

/// The contents of a DER element with `tag` at the start of `input`, and what follows it.
fn element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&first, rest) = input.split_first()?;
    if first != tag {
        return None;
    }
    let (len, rest) = length(rest)?;
    (rest.len() >= len).then(|| rest.split_at(len))
}

/// The whole first element (tag, length and contents) of `input`, and what follows it.
fn raw_element(input: &[u8]) -> Option<(&[u8], &[u8])> {
    let (_, rest) = element(input, *input.first()?)?;
    Some((&input[..input.len() - rest.len()], rest))
}

fn length(input: &[u8]) -> Option<(usize, &[u8])> {
    let (&first, rest) = input.split_first()?;
    if first < 0x80 {
        return Some((usize::from(first), rest));
    }
    let count = usize::from(first & 0x7f);
    if count == 0 || count > 4 || rest.len() < count {
        return None;
    }
    let (bytes, rest) = rest.split_at(count);
    let len = bytes.iter().fold(0usize, |n, b| (n << 8) | usize::from(*b));
    Some((len, rest))
}

fn tlv(tag: u8, contents: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = contents.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend_from_slice(&bytes);
    }
    out.extend_from_slice(contents);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkcs8(algorithm: &[u8], key: &[u8]) -> Vec<u8> {
        let mut body = tlv(INTEGER, &[0]);
        body.extend(tlv(SEQUENCE, algorithm));
        body.extend(tlv(OCTET_STRING, key));
        tlv(SEQUENCE, &body)
    }

    #[test]
    fn a_bundle_splits_into_the_chain_and_a_pkcs1_key() {
        let rsa_key = tlv(SEQUENCE, &tlv(INTEGER, &[0; 200]));
        let mut algorithm = tlv(OID, RSA_ENCRYPTION);
        algorithm.extend([0x05, 0x00]);
        let bundle = format!(
            "{}{}{}",
            encode("PRIVATE KEY", &pkcs8(&algorithm, &rsa_key)),
            encode("CERTIFICATE", b"leaf"),
            encode("CERTIFICATE", b"intermediate"),
        );
        let chain = String::from_utf8(certificates(bundle.as_bytes()).unwrap()).unwrap();
        assert_eq!(
            chain,
            format!(
                "{}{}",
                encode("CERTIFICATE", b"leaf"),
                encode("CERTIFICATE", b"intermediate")
            )
        );
        let key = String::from_utf8(private_key(bundle.as_bytes()).unwrap()).unwrap();
        assert_eq!(key, encode("RSA PRIVATE KEY", &rsa_key));
    }

    #[test]
    fn a_pkcs8_ec_key_becomes_sec1_with_its_curve() {
        let p256 = [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
        let mut inner = tlv(INTEGER, &[1]);
        inner.extend(tlv(OCTET_STRING, &[7; 32]));
        inner.extend(tlv(0xa1, &tlv(0x03, &[0; 66])));
        let ec_key = tlv(SEQUENCE, &inner);
        let mut algorithm = tlv(OID, EC_PUBLIC_KEY);
        algorithm.extend(tlv(OID, &p256));
        let bundle = encode("PRIVATE KEY", &pkcs8(&algorithm, &ec_key));
        let pem = private_key(bundle.as_bytes()).unwrap();
        let parsed = parse(&pem).unwrap();
        assert_eq!(parsed[0].label, "EC PRIVATE KEY");
        let (body, _) = element(&parsed[0].der, SEQUENCE).unwrap();
        let (_, rest) = raw_element(body).unwrap();
        let (private, rest) = element(rest, OCTET_STRING).unwrap();
        assert_eq!(private, [7; 32]);
        let (params, rest) = element(rest, CONTEXT_0).unwrap();
        assert_eq!(element(params, OID).unwrap().0, p256);
        assert_eq!(rest[0], 0xa1, "the public key follows the curve");
    }

    #[test]
    fn keys_in_sec1_or_pkcs1_pass_through_and_bad_bundles_say_why() {
        let sec1 = encode("EC PRIVATE KEY", b"der");
        assert_eq!(private_key(sec1.as_bytes()).unwrap(), sec1.as_bytes());
        assert_eq!(
            certificates(sec1.as_bytes()).unwrap_err(),
            TlsError::NoCertificate
        );
        let cert = encode("CERTIFICATE", b"leaf");
        assert_eq!(private_key(cert.as_bytes()).unwrap_err(), TlsError::NoKey);
        let encrypted = encode("ENCRYPTED PRIVATE KEY", b"x");
        assert!(matches!(
            private_key(encrypted.as_bytes()),
            Err(TlsError::Key(_))
        ));
        assert!(matches!(
            certificates(b"not pem at all"),
            Err(TlsError::Pem(_))
        ));
        assert!(matches!(
            certificates(b"-----BEGIN CERTIFICATE-----\nAAAA\n"),
            Err(TlsError::Pem(_))
        ));
        let bad = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert!(matches!(private_key(bad), Err(TlsError::Key(_))));
    }
}
